package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/socklb/socklb/internal/sandbox"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// StopAPIServer kills kube-apiserver and waits for it to exit; etcd and
// the controller manager keep running, as in an API server outage.
func (c *Cluster) StopAPIServer(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	api := c.api
	c.api = nil
	c.mu.Unlock()
	if api == nil {
		t.Fatal("StopAPIServer: the API server is not running")
	}
	if err := api.stop(); err != nil {
		t.Fatalf("stop kube-apiserver: %v", err)
	}
}

// StartAPIServer starts kube-apiserver again with the same flags, port,
// certificates and tokens, and waits until it is ready. Existing clients
// reconnect on their own.
func (c *Cluster) StartAPIServer(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	running := c.api != nil
	c.mu.Unlock()
	if running {
		t.Fatal("StartAPIServer: the API server is running")
	}
	api := c.start(t, "kube-apiserver", c.Binaries.APIServer, c.apiArgs...)
	c.mu.Lock()
	c.api = api
	c.mu.Unlock()
	if err := c.waitAPIServer(); err != nil {
		t.Fatal(err)
	}
}

// PIDs returns the process ids of the components that run now.
func (c *Cluster) PIDs() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	pids := map[string]int{}
	for _, comp := range []*component{c.etcd, c.api, c.kcm} {
		if comp != nil {
			pids[comp.name] = comp.cmd.Process.Pid
		}
	}
	return pids
}

// WriteKubeconfig writes a kubeconfig file (mode 0600, in a t.TempDir) for
// the given user and token, e.g. PlainUser and PlainToken, and returns its
// path.
func (c *Cluster) WriteKubeconfig(t testing.TB, user, token string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), user+".kubeconfig")
	if err := c.writeKubeconfig(path, user, token); err != nil {
		t.Fatal(err)
	}
	return path
}

func (c *Cluster) writeKubeconfig(path, user, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["e2e"] = &clientcmdapi.Cluster{Server: c.Server, CertificateAuthorityData: c.CAPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: user}
	cfg.CurrentContext = "e2e"
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	return os.WriteFile(path, data, 0o600)
}

// start runs a component inside NS with its output appended to a log file
// in Dir, and records it for stopAll and the logs.
func (c *Cluster) start(t testing.TB, name, bin string, args ...string) *component {
	t.Helper()
	logPath := filepath.Join(c.Dir, name+".log")
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close() // the child has its own copy
	fmt.Fprintf(f, "=== %s: %s %s\n", time.Now().Format(time.RFC3339Nano), bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Dir = c.Dir
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + c.Dir, "TMPDIR=" + c.Dir}
	cmd.Stdout, cmd.Stderr = f, f
	stop, err := sandbox.StartProcessIn(cmd, c.NS, nil)
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	comp := &component{name: name, log: logPath, cmd: cmd, stop: stop}
	c.mu.Lock()
	c.components = append(c.components, comp)
	c.mu.Unlock()
	return comp
}

// stopAll kills every component that still runs, the controller manager
// first and etcd last. Stopping one twice is harmless.
func (c *Cluster) stopAll() error {
	c.mu.Lock()
	comps := append([]*component(nil), c.components...)
	c.api, c.kcm, c.etcd = nil, nil, nil
	c.mu.Unlock()
	var errs []error
	for i := len(comps) - 1; i >= 0; i-- {
		if err := comps[i].stop(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", comps[i].name, err))
		}
	}
	return errors.Join(errs...)
}

func (c *Cluster) waitAPIServer() error {
	return c.wait("kube-apiserver /readyz", func(ctx context.Context) error {
		return c.getOK(ctx, c.Server+"/readyz", c.AdminToken)
	}, c.etcd, c.api)
}

// wait polls check every readyPoll until it returns nil, for at most
// readyTimeout. It gives up at once when one of the watched components
// has exited.
func (c *Cluster) wait(what string, check func(ctx context.Context) error, watch ...*component) error {
	deadline := time.Now().Add(readyTimeout)
	start := time.Now()
	var last error
	for {
		for _, comp := range watch {
			if comp != nil && exited(comp.cmd.Process.Pid) {
				return fmt.Errorf("waiting for %s: %s exited (its log is printed below)", what, comp.name)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		last = check(ctx)
		cancel()
		if last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v: %v", what, time.Since(start).Round(time.Millisecond), last)
		}
		time.Sleep(readyPoll)
	}
}

// getOK GETs url inside NS and wants 200.
func (c *Cluster) getOK(ctx context.Context, url, bearer string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := c.health.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s: %s", url, resp.Status, bytes.TrimSpace(body))
	}
	return nil
}

// healthClient is an HTTP client for health checks that dials inside NS,
// trusts only the cluster's CA and keeps no connections across restarts.
func (c *Cluster) healthClient() *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.CAPEM)
	return &http.Client{
		Transport: &http.Transport{
			DialContext:       c.NS.Dial,
			Proxy:             noProxy,
			TLSClientConfig:   &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
			DisableKeepAlives: true,
		},
		Timeout: 5 * time.Second,
	}
}

func noProxy(*http.Request) (*url.URL, error) { return nil, nil }

// dumpLogs prints the tail of each component's log.
func (c *Cluster) dumpLogs(t testing.TB) {
	c.mu.Lock()
	seen := map[string]bool{}
	var logs []*component
	for _, comp := range c.components {
		if !seen[comp.log] {
			seen[comp.log] = true
			logs = append(logs, comp)
		}
	}
	c.mu.Unlock()
	for _, comp := range logs {
		data, err := ReadTail(comp.log, logTailBytes)
		if err != nil {
			t.Logf("%s log: %v", comp.name, err)
			continue
		}
		t.Logf("--- %s log (last %d KiB at most) ---\n%s", comp.name, logTailBytes>>10, data)
	}
}

// ReadTail returns at most the last n bytes of the file at path.
func ReadTail(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() > n {
		if _, err := f.Seek(fi.Size()-n, io.SeekStart); err != nil {
			return nil, err
		}
	}
	return io.ReadAll(f)
}

// exited reports whether our child pid has exited (it is a zombie until
// its stop func reaps it) or is gone.
func exited(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the command name in parentheses, which may itself
	// contain ") ".
	i := bytes.LastIndexByte(data, ')')
	return i < 0 || i+2 >= len(data) || data[i+2] == 'Z' || data[i+2] == 'X'
}

func token() string {
	var b [16]byte
	rand.Read(b[:]) // never fails (crypto/rand, Go ≥ 1.24)
	return hex.EncodeToString(b[:])
}
