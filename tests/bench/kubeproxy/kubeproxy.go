// Package kubeproxy runs the real kube-proxy (v1.37, built and cached by
// tests/e2e/kubebuild) in iptables or nftables mode inside the network
// namespace of a [cluster.Cluster], as the baseline of socklb's
// benchmarks, and checks that the host's firewall stays untouched.
//
// Everything kube-proxy does stays in the cluster's namespace: it talks
// only to the API server on 127.0.0.1 there, and its iptables or nftables
// rules, conntrack entries and per-namespace sysctls are the namespace's.
// The namespace shares the host's mount namespace, so it could still write
// global knobs; the flags that would (conntrack max and hashsize under
// /sys/module) are turned off, its OOM score is left alone, and `modprobe`
// in its PATH is a stub that refuses, so it loads no kernel module (the
// kernel may still autoload netfilter modules on its own, as for any
// rule). [SnapshotHostFirewall] before and after a run proves it.
//
// Start adds, inside the namespace only, a route to each IPv4 service
// range through lo: without one, connect() to a ClusterIP fails with
// ENETUNREACH before kube-proxy's OUTPUT DNAT can see the packet (the
// namespace has no default route). The DNAT reroutes the packet to the
// backend's local address. IPv6 ClusterIPs get no route (Linux turns IPv6
// routes through lo into reject routes, and this kernel has no dummy
// device): kube-proxy programs them, but they cannot be reached.
//
// The host needs the iptables, nftables and conntrack Debian packages
// (kube-proxy execs iptables-save/-restore and nft; v1.37 clears conntrack
// entries over netlink and never runs the conntrack binary).
package kubeproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/socklb/socklb/internal/sandbox"
	"github.com/socklb/socklb/tests/e2e/cluster"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

// Mode is kube-proxy's --proxy-mode.
type Mode string

// The modes the benchmarks compare.
const (
	IPTables Mode = "iptables"
	NFTables Mode = "nftables"
)

// Backend is the iptables flavour behind the `iptables` commands that
// kube-proxy runs in iptables mode (it execs whatever `iptables` is in its
// PATH; Start puts a directory first in PATH that pins one).
type Backend string

const (
	// BackendNFT is iptables-nft, Debian's default: iptables rules
	// stored as nf_tables tables (table ip nat, ...).
	BackendNFT Backend = "nft"
	// BackendLegacy is iptables-legacy (x_tables).
	BackendLegacy Backend = "legacy"
)

// Addresses inside the cluster's namespace. It is private, so the ports
// are kube-proxy's defaults and fixed: one kube-proxy at a time.
const (
	// NodeIP is --bind-address, kube-proxy's primary node IP, and the
	// InternalIP that Start gives a Node that has no address.
	NodeIP      = "127.0.0.1"
	MetricsPort = 10249
	HealthzPort = 10256
	// ClusterCIDR is the default --cluster-cidr: the pods' range in the
	// cluster package (198.18.0.0/16, which holds the benchmark's
	// 198.18.0.0/24). Connections from inside it are pod traffic, not
	// masqueraded; only its source addresses matter, so it may overlap a
	// service range that Options.ExtraServiceCIDRs adds.
	ClusterCIDR = "198.18.0.0/16"
)

// path is PATH after the stub directory: the system's directories only.
const path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Config is what [StartConfig] starts. Mode and NodeName are required.
type Config struct {
	Mode Mode
	// NodeName is --hostname-override. The Node must exist; if it has no
	// addresses, Start sets InternalIP NodeIP on its status, as a kubelet
	// would, because kube-proxy otherwise waits 30 s for one (and exits
	// when a Node's addresses change later).
	NodeName string
	// LogDir receives kube-proxy-MODE.log (kube-proxy's output, then the
	// output of `kube-proxy --cleanup`). Empty: a temporary directory
	// removed by stop.
	LogDir string
	// Backend is the iptables flavour in iptables mode; empty means
	// BackendNFT. Ignored in nftables mode.
	Backend Backend
	// ClusterCIDR is --cluster-cidr; empty means ClusterCIDR.
	ClusterCIDR string
	// Args are appended to the flags (a later flag wins), e.g.
	// "--iptables-min-sync-period=0".
	Args []string
}

// Proxy is a running kube-proxy. Its fields are read-only.
type Proxy struct {
	Cmd  *exec.Cmd
	PID  int
	Mode Mode
	// Backend is the iptables flavour (iptables mode only).
	Backend Backend
	// MetricsURL and HealthzURL are inside the cluster's namespace:
	// fetch them with a client that dials through c.NS (as
	// [Proxy.Metrics] does).
	MetricsURL string
	HealthzURL string
	// Log is kube-proxy's log file.
	Log string

	c    *cluster.Cluster
	env  []string // PATH with the stub directory first
	http *http.Client
}

// Start runs kube-proxy in mode for nodeName inside c's namespace with
// the default [Config] (iptables-nft in iptables mode) and logs into
// logDir. See [StartConfig].
func Start(ctx context.Context, c *cluster.Cluster, mode Mode, nodeName, logDir string) (*Proxy, func() error, error) {
	return StartConfig(ctx, c, Config{Mode: mode, NodeName: nodeName, LogDir: logDir})
}

// StartConfig runs kube-proxy inside c's namespace and returns when its
// metrics server answers, which is before its first sync: wait for that
// with [Proxy.WaitSynced], or for a Service with [Proxy.RulesFor].
//
// stop kills kube-proxy (SIGKILL, its pid only), runs `kube-proxy
// --cleanup` in the namespace, removes the KUBE-FIREWALL chain that
// --cleanup leaves (it is kubelet's), deletes the nf_tables tables that
// appeared since Start (kube-proxy's, and iptables-nft's nat, filter and
// mangle), flushes the namespace's conntrack table and removes the routes
// Start added; it then checks that no KUBE-* chain and no kube-proxy table
// is left, and reports any leftover as an error. With iptables-legacy the
// built-in tables stay (empty; x_tables cannot unregister them until the
// namespace goes). It is safe to call more than once. On error,
// StartConfig has cleaned up already.
func StartConfig(ctx context.Context, c *cluster.Cluster, cfg Config) (p *Proxy, stop func() error, err error) {
	switch cfg.Mode {
	case IPTables, NFTables:
	default:
		return nil, nil, fmt.Errorf("kube-proxy mode %q: want %q or %q", cfg.Mode, IPTables, NFTables)
	}
	if cfg.NodeName == "" {
		return nil, nil, errors.New("kube-proxy: no node name")
	}
	switch cfg.Backend {
	case "":
		cfg.Backend = BackendNFT
	case BackendNFT, BackendLegacy:
	default:
		return nil, nil, fmt.Errorf("iptables backend %q: want %q or %q", cfg.Backend, BackendNFT, BackendLegacy)
	}
	if cfg.ClusterCIDR == "" {
		cfg.ClusterCIDR = ClusterCIDR
	}
	if c.Binaries == nil || c.Binaries.KubeProxy == "" {
		return nil, nil, errors.New("kube-proxy: the cluster's binaries have no kube-proxy")
	}

	// Cleanups pile up as Start goes; on error they run at once, on
	// success they are stop's.
	var undo []func() error
	runUndo := func() error {
		var errs []error
		for i := len(undo) - 1; i >= 0; i-- {
			errs = append(errs, undo[i]())
		}
		undo = nil
		return errors.Join(errs...)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, runUndo())
		}
	}()

	if err := ensureNodeAddress(ctx, c, cfg.NodeName); err != nil {
		return nil, nil, err
	}
	stubs, err := os.MkdirTemp("", "socklb-kube-proxy-bin-")
	if err != nil {
		return nil, nil, err
	}
	undo = append(undo, func() error { return os.RemoveAll(stubs) })
	if err := writeStubs(stubs, cfg.Backend); err != nil {
		return nil, nil, err
	}
	logDir := cfg.LogDir
	if logDir == "" {
		if logDir, err = os.MkdirTemp(stubs, "log-"); err != nil {
			return nil, nil, err
		}
	}
	env := []string{
		"PATH=" + stubs + ":" + path, "HOME=" + stubs, "TMPDIR=" + stubs,
		// iptables (legacy) serializes on a lock file, /run/xtables.lock
		// by default: that is the host's /run, and x_tables state is per
		// namespace anyway, so use a lock of our own.
		"XTABLES_LOCKFILE=" + filepath.Join(stubs, "xtables.lock"),
	}

	tablesBefore, err := nftTables(ctx, c.NS, env)
	if err != nil {
		return nil, nil, fmt.Errorf("list nf_tables tables in %s: %w", c.NS, err)
	}
	routes, err := addServiceRoutes(c)
	if err != nil {
		return nil, nil, err
	}
	undo = append(undo, func() error { return delRoutes(c.NS, routes) })
	// Registered before the process starts, so it runs after it is killed.
	undo = append(undo, func() error {
		return cleanup(c, env, cfg.Mode, logPathIn(logDir, cfg.Mode), tablesBefore)
	})

	p = &Proxy{
		Mode:       cfg.Mode,
		MetricsURL: fmt.Sprintf("http://%s/metrics", net.JoinHostPort(NodeIP, strconv.Itoa(MetricsPort))),
		HealthzURL: fmt.Sprintf("http://%s/healthz", net.JoinHostPort(NodeIP, strconv.Itoa(HealthzPort))),
		Log:        logPathIn(logDir, cfg.Mode),
		c:          c,
		env:        env,
		http: &http.Client{
			Transport: &http.Transport{
				DialContext:       c.NS.Dial,
				Proxy:             func(*http.Request) (*url.URL, error) { return nil, nil },
				DisableKeepAlives: true,
			},
			Timeout: 30 * time.Second,
		},
	}
	if cfg.Mode == IPTables {
		p.Backend = cfg.Backend
	}
	args := []string{
		"--kubeconfig=" + c.Kubeconfig,
		"--hostname-override=" + cfg.NodeName,
		"--proxy-mode=" + string(cfg.Mode),
		"--bind-address=" + NodeIP,
		"--metrics-bind-address=" + net.JoinHostPort(NodeIP, strconv.Itoa(MetricsPort)),
		"--healthz-bind-address=" + net.JoinHostPort(NodeIP, strconv.Itoa(HealthzPort)),
		"--detect-local-mode=ClusterCIDR",
		"--cluster-cidr=" + cfg.ClusterCIDR,
		// nf_conntrack_max may be global, and the hashsize is a module
		// parameter under /sys, which this process shares with the host:
		// leave both alone. The TCP timeouts are per namespace, but are
		// left alone too, so that every peer of a benchmark sees the same.
		"--conntrack-max-per-core=0",
		"--conntrack-tcp-timeout-established=0",
		"--conntrack-tcp-timeout-close-wait=0",
		// The default -999 would make it the last thing the OOM killer
		// picks on a shared machine.
		"--oom-score-adj=0",
		// No localhost NodePorts: kube-proxy would set route_localnet (a
		// per-namespace sysctl) for them; the benchmarks use ClusterIPs.
		// NodePorts only on the node IP, as kube-proxy recommends.
		"--iptables-localhost-nodeports=false",
		"--nodeport-addresses=primary",
		"--v=2",
	}
	args = append(args, cfg.Args...)

	logFile, err := os.OpenFile(p.Log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, err
	}
	defer logFile.Close() // the child has its own copy
	fmt.Fprintf(logFile, "=== %s: %s %s\n", time.Now().Format(time.RFC3339Nano), c.Binaries.KubeProxy, strings.Join(args, " "))
	cmd := exec.Command(c.Binaries.KubeProxy, args...)
	cmd.Dir = stubs
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// The process that started us may have moved into a benchmark
	// client's cgroup since; kube-proxy is no client.
	if home := sandbox.StartCgroup(); home != "" {
		if fd, err := unix.Open(home, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
			defer unix.Close(fd)
			cmd.SysProcAttr.UseCgroupFD = true
			cmd.SysProcAttr.CgroupFD = fd
		}
	}
	kill, err := sandbox.StartProcessIn(cmd, c.NS, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("start kube-proxy: %w", err)
	}
	p.Cmd, p.PID = cmd, cmd.Process.Pid
	undo = append(undo, kill) // SIGKILL to this pid only, then wait

	if err := p.waitMetrics(ctx); err != nil {
		return nil, nil, err
	}
	var once sync.Once
	var stopErr error
	return p, func() error {
		once.Do(func() { stopErr = runUndo() })
		return stopErr
	}, nil
}

func logPathIn(dir string, mode Mode) string {
	return filepath.Join(dir, "kube-proxy-"+string(mode)+".log")
}

// startTimeout bounds the wait for kube-proxy's metrics server, which
// starts before any sync.
const startTimeout = 60 * time.Second

func (p *Proxy) waitMetrics(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	var last error
	for {
		if !alive(p.PID) {
			return fmt.Errorf("kube-proxy exited while starting:\n%s", tail(p.Log))
		}
		_, last = p.Metrics(ctx)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-proxy metrics at %s: %w (last: %v)\n%s", p.MetricsURL, context.Cause(ctx), last, tail(p.Log))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// RSS is kube-proxy's resident set size in bytes (VmRSS of
// /proc/PID/status).
func (p *Proxy) RSS() (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.PID))
	if err != nil {
		return 0, fmt.Errorf("kube-proxy RSS: %w", err)
	}
	return parseVmRSS(data)
}

// Metrics fetches kube-proxy's /metrics inside the namespace and returns
// every sample, keyed by name and labels as exposed, e.g.
// `kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"}`.
func (p *Proxy) Metrics(ctx context.Context) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.MetricsURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := p.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", p.MetricsURL, resp.Status)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	return parseMetrics(body)
}

// SyncCount is how many times kube-proxy has synced its IPv4 rules: the
// count of kubeproxy_sync_proxy_rules_duration_seconds{ip_family="IPv4"}
// (0 before the first sync). The dual-stack proxier counts each family
// apart.
func (p *Proxy) SyncCount(ctx context.Context) (float64, error) {
	m, err := p.Metrics(ctx)
	if err != nil {
		return 0, err
	}
	return m[`kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"}`], nil
}

// WaitSynced waits until SyncCount is more than after (0: the first
// sync) and returns it. It fails when kube-proxy exits.
func (p *Proxy) WaitSynced(ctx context.Context, after float64) (float64, error) {
	for {
		n, err := p.SyncCount(ctx)
		if err == nil && n > after {
			return n, nil
		}
		if !alive(p.PID) {
			return 0, fmt.Errorf("kube-proxy exited:\n%s", tail(p.Log))
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("kube-proxy sync count above %v: %w (last: %v, %v)", after, context.Cause(ctx), n, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// alive reports whether pid (our child) has neither exited nor become a
// zombie.
func alive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(data, ')')
	return i >= 0 && i+2 < len(data) && data[i+2] != 'Z' && data[i+2] != 'X'
}

// tail is the end of a log file, for errors.
func tail(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	const n = 8 << 10
	if len(data) > n {
		data = data[len(data)-n:]
	}
	return string(data)
}

// stubScript is the `modprobe` kube-proxy finds first in its PATH: the
// ipvs cleanup that every start runs would otherwise load ip_vs into the
// host's kernel.
const stubScript = "#!/bin/sh\necho \"modprobe $*: refused inside the socklb benchmark\" >&2\nexit 1\n"

// writeStubs fills dir with the `modprobe` stub and links that pin the
// iptables commands to one backend.
func writeStubs(dir string, backend Backend) error {
	if err := os.WriteFile(filepath.Join(dir, "modprobe"), []byte(stubScript), 0o755); err != nil {
		return err
	}
	for _, fam := range []string{"iptables", "ip6tables"} {
		for _, suffix := range []string{"", "-save", "-restore"} {
			target, err := exec.LookPath(fam + "-" + string(backend) + suffix)
			if err != nil {
				return fmt.Errorf("iptables backend %s: %w (install Debian's iptables package)", backend, err)
			}
			if err := os.Symlink(target, filepath.Join(dir, fam+suffix)); err != nil {
				return err
			}
		}
	}
	return nil
}

// ensureNodeAddress checks that the Node exists and gives it InternalIP
// NodeIP when it has no address.
func ensureNodeAddress(ctx context.Context, c *cluster.Cluster, name string) error {
	return retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		node, err := c.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return fmt.Errorf("kube-proxy: node %q does not exist: create it first", name)
		}
		if err != nil {
			return err
		}
		if len(node.Status.Addresses) > 0 {
			return nil
		}
		node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: NodeIP}}
		_, err = c.Client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
		return err
	})
}

// addServiceRoutes adds a route through lo for each IPv4 service range
// of c that has none yet, and returns those it added.
func addServiceRoutes(c *cluster.Cluster) ([]netip.Prefix, error) {
	var added []netip.Prefix
	err := c.NS.Do(func() error {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink: %w", err)
		}
		defer h.Close()
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		for _, p := range c.ServiceCIDRs {
			if !p.Addr().Is4() {
				continue
			}
			r := &netlink.Route{LinkIndex: lo.Attrs().Index, Dst: ipNet(p), Scope: netlink.SCOPE_LINK}
			if err := h.RouteAdd(r); err != nil {
				if errors.Is(err, unix.EEXIST) {
					continue // someone else's route; leave it
				}
				return fmt.Errorf("route %s via lo: %w", p, err)
			}
			added = append(added, p)
		}
		return nil
	})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("routes to the service ranges in %s: %w", c.NS, err), delRoutes(c.NS, added))
	}
	return added, nil
}

func delRoutes(ns *sandbox.Netns, routes []netip.Prefix) error {
	if len(routes) == 0 {
		return nil
	}
	return ns.Do(func() error {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink: %w", err)
		}
		defer h.Close()
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		var errs []error
		for _, p := range routes {
			r := &netlink.Route{LinkIndex: lo.Attrs().Index, Dst: ipNet(p), Scope: netlink.SCOPE_LINK}
			if err := h.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("delete route %s: %w", p, err))
			}
		}
		return errors.Join(errs...)
	})
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
