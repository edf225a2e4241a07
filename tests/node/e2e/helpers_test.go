//go:build nodee2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/socklb/socklb/tests/node/harness"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// nodeEnv is the node the scenarios share and what was deployed on it.
type nodeEnv struct {
	n    *harness.Node
	fp   *harness.Footprint
	repo string // the repository's root
	// probeBin is the nodeprobe binary on the host (the probe image's).
	probeBin string
	// agentImages are the agent image's two tags in the node's
	// containerd: socklb-agent:latest (what deploy/ names) and the
	// version tag `make image` adds.
	agentLatest, agentSecond string
}

// repoRoot is the repository's root, from the package's directory.
func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || !bytes.HasPrefix(b, []byte("module github.com/socklb/socklb\n")) {
		t.Fatalf("%s is not socklb's repository root (%v)", root, err)
	}
	return root
}

// agentArchive is the agent image archive: $SOCKLB_NODE_AGENT_IMAGE, else
// `make image`'s bin/socklb-agent-image.tar.
func agentArchive(t testing.TB, repo string) string {
	t.Helper()
	p := os.Getenv("SOCKLB_NODE_AGENT_IMAGE")
	if p == "" {
		p = filepath.Join(repo, "bin", "socklb-agent-image.tar")
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("the agent image: %v (run `make image`, or set $SOCKLB_NODE_AGENT_IMAGE)", err)
	}
	return p
}

// buildProbe builds tests/node/cmd/nodeprobe static into the test's
// temporary directory.
func buildProbe(t testing.TB, repo string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "nodeprobe")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, "./tests/node/cmd/nodeprobe")
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build nodeprobe: %v\n%s", err, b)
	}
	return out
}

// kubectl runs kubectl inside the node with the admin's kubeconfig and
// returns stdout; stderr is returned in the error.
func (e *nodeEnv) kubectl(ctx context.Context, args ...string) (string, error) {
	cmd := e.n.Command(ctx, e.n.Binaries.Kubectl, append([]string{"--kubeconfig=" + e.n.Kubeconfig}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// mustKubectl is kubectl for at most two minutes; it fails the test on
// an error.
func (e *nodeEnv) mustKubectl(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	out, err := e.kubectl(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

var placeholder = regexp.MustCompile(`@[A-Z0-9_]+@`)

// fill replaces each @NAME@ of text with values[NAME] and fails when a
// value is unused or a placeholder is left.
func fill(t testing.TB, text string, values map[string]string) string {
	t.Helper()
	for k, v := range values {
		p := "@" + k + "@"
		if !strings.Contains(text, p) {
			t.Fatalf("no %s to fill in:\n%s", p, text)
		}
		text = strings.ReplaceAll(text, p, v)
	}
	if left := placeholder.FindAllString(text, -1); len(left) > 0 {
		t.Fatalf("placeholders left unfilled: %v", left)
	}
	return text
}

// renderOverlay renders tests/node/deploy/<variant> with kubectl's
// kustomize and fills in the node's values: the cgroup2 directory of
// kubelet's cgroupRoot and the API server's real address.
func (e *nodeEnv) renderOverlay(t testing.TB, variant string) string {
	t.Helper()
	dir := filepath.Join(e.repo, "tests", "node", "deploy", variant)
	out := e.mustKubectl(t, "kustomize", "--load-restrictor=LoadRestrictionsNone", dir)
	return fill(t, out, map[string]string{
		"CGROUP2_HOST_PATH": e.n.Cgroup2Dir,
		"API_SERVER_HOST":   e.n.APIServer.Addr().String(),
		"API_SERVER_PORT":   strconv.Itoa(int(e.n.APIServer.Port())),
	})
}

// apply writes manifest to a file and applies it with kubectl; it logs
// kubectl's output.
func (e *nodeEnv) apply(t testing.TB, name, manifest string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), name+".yaml")
	if err := os.WriteFile(f, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("kubectl apply -f %s.yaml:\n%s", name, strings.TrimSpace(e.mustKubectl(t, "apply", "-f", f)))
}

// waitFor polls check every 200 ms until it returns nil, at most timeout.
func waitFor(t testing.TB, what string, timeout time.Duration, check func(ctx context.Context) error) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		err := check(ctx)
		cancel()
		if err == nil {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("%s: not after %v: %v", what, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

const (
	agentNamespace = "kube-system"
	agentDaemonSet = "socklb-agent"
	agentSelector  = "app.kubernetes.io/name=socklb"
)

// waitDaemonSet waits until the agent DaemonSet has rolled out its
// current spec and its one pod is Ready, and returns that pod.
func (e *nodeEnv) waitDaemonSet(t testing.TB, timeout time.Duration) (*corev1.Pod, time.Duration) {
	t.Helper()
	var pod *corev1.Pod
	took := waitFor(t, "DaemonSet "+agentNamespace+"/"+agentDaemonSet+" Ready", timeout, func(ctx context.Context) error {
		ds, err := e.n.Client.AppsV1().DaemonSets(agentNamespace).Get(ctx, agentDaemonSet, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if err := daemonSetDone(ds); err != nil {
			return err
		}
		pods, err := e.n.Client.CoreV1().Pods(agentNamespace).List(ctx, metav1.ListOptions{LabelSelector: agentSelector})
		if err != nil {
			return err
		}
		var ready []*corev1.Pod
		for i := range pods.Items {
			p := &pods.Items[i]
			if p.DeletionTimestamp == nil && podReady(p) {
				ready = append(ready, p)
			}
		}
		if len(pods.Items) != 1 || len(ready) != 1 {
			return fmt.Errorf("%d agent pods, %d of them Ready and not terminating", len(pods.Items), len(ready))
		}
		pod = ready[0]
		return nil
	})
	return pod, took
}

func daemonSetDone(ds *appsv1.DaemonSet) error {
	s := ds.Status
	if s.ObservedGeneration < ds.Generation {
		return fmt.Errorf("generation %d not observed yet (%d)", ds.Generation, s.ObservedGeneration)
	}
	if s.DesiredNumberScheduled != 1 || s.UpdatedNumberScheduled != 1 || s.NumberReady != 1 || s.NumberAvailable != 1 {
		return fmt.Errorf("desired %d, updated %d, ready %d, available %d", s.DesiredNumberScheduled,
			s.UpdatedNumberScheduled, s.NumberReady, s.NumberAvailable)
	}
	return nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// logLine is one of the agent's JSON log lines (log-format json).
type logLine struct {
	Level string `json:"level"`
	Msg   string `json:"msg"`
}

// agentLogs returns the agent pod's log and its lines at WARN or above
// (and any line that is not the agent's JSON).
func (e *nodeEnv) agentLogs(t testing.TB, pod string) (all string, problems []string) {
	t.Helper()
	all = e.mustKubectl(t, "-n", agentNamespace, "logs", pod)
	sc := bufio.NewScanner(strings.NewReader(all))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l logLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil || l.Level == "" {
			problems = append(problems, "not a JSON log line: "+sc.Text())
			continue
		}
		if l.Level != "INFO" && l.Level != "DEBUG" {
			problems = append(problems, sc.Text())
		}
	}
	return all, problems
}

// probe runs /nodeprobe in a pod's container with kubectl exec (so it
// runs in the pod's cgroup and network namespace, as the pod's own
// processes do) and decodes its JSON output into v.
func (e *nodeEnv) probe(ctx context.Context, ns, pod string, v any, args ...string) error {
	out, err := e.kubectl(ctx, append([]string{"-n", ns, "exec", pod, "--", "/nodeprobe"}, args...)...)
	if err != nil {
		return err
	}
	if v == nil {
		return nil
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return fmt.Errorf("nodeprobe %s: %w: %q", strings.Join(args, " "), err, out)
	}
	return nil
}

func (e *nodeEnv) mustProbe(t testing.TB, ns, pod string, v any, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if err := e.probe(ctx, ns, pod, v, args...); err != nil {
		t.Fatal(err)
	}
}

// connectResult is nodeprobe connect's output.
type connectResult struct {
	Connects  int            `json:"connects"`
	Failed    int            `json:"failed"`
	Backends  map[string]int `json:"backends"`
	Peers     map[string]int `json:"peers"`
	Errors    map[string]int `json:"errors"`
	Took      string         `json:"took"`
	StoppedBy string         `json:"stoppedBy"`
	Timeline  []struct {
		At     int64  `json:"at"`
		Result string `json:"result"`
	} `json:"timeline"`
}

// clientLoop is a bounded connect loop in a client pod that runs while a
// scenario changes the cluster.
type clientLoop struct {
	e        *nodeEnv
	ns, pod  string
	stopFile string
	done     chan struct{}
	res      connectResult
	err      error
}

// startLoop starts nodeprobe connect to addr every interval for at most
// max; stop ends it early.
func (e *nodeEnv) startLoop(t testing.TB, ns, pod, addr string, interval, max time.Duration) *clientLoop {
	t.Helper()
	l := &clientLoop{e: e, ns: ns, pod: pod, stopFile: fmt.Sprintf("/tmp/stop-%d", time.Now().UnixNano()), done: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), max+time.Minute)
	go func() {
		defer close(l.done)
		defer cancel()
		l.err = e.probe(ctx, ns, pod, &l.res, "connect", "--addr", addr, "--duration", max.String(),
			"--interval", interval.String(), "--timeout", "1s", "--stop-file", l.stopFile, "--timeline")
	}()
	t.Cleanup(func() {
		// A loop the test did not stop (it failed first) ends now, not
		// at --duration: kubectl exec's end does not stop it.
		select {
		case <-l.done:
		default:
			ctx, cancelTouch := context.WithTimeout(context.Background(), 30*time.Second)
			e.probe(ctx, ns, pod, nil, "touch", l.stopFile)
			cancelTouch()
		}
		cancel()
		<-l.done
	})
	// Time for kubectl exec to start the loop; stop checks that the
	// loop's first connect came before the operation it measures.
	time.Sleep(2 * time.Second)
	return l
}

// stop ends the loop and returns what it saw. It fails the test unless
// the loop ran through the whole operation, from before from to after
// to, and was ended by stop (not by its --duration).
func (l *clientLoop) stop(t testing.TB, from, to time.Time) connectResult {
	t.Helper()
	l.e.mustProbe(t, l.ns, l.pod, nil, "touch", l.stopFile)
	<-l.done
	if l.err != nil {
		t.Fatalf("client loop: %v", l.err)
	}
	r := l.res
	if r.StoppedBy != "stop-file" || len(r.Timeline) != r.Connects || r.Connects == 0 {
		t.Fatalf("client loop ended by %q with %d connects, %d in its timeline: it did not run until stopped", r.StoppedBy, r.Connects, len(r.Timeline))
	}
	first, last := time.UnixMilli(r.Timeline[0].At), time.UnixMilli(r.Timeline[len(r.Timeline)-1].At)
	if first.After(from) || last.Before(to) {
		t.Fatalf("client loop ran %s – %s, not over the whole operation %s – %s", first.Format(time.TimeOnly+".000"),
			last.Format(time.TimeOnly+".000"), from.Format(time.TimeOnly+".000"), to.Format(time.TimeOnly+".000"))
	}
	return r
}

// between counts the connects that began in [from, to] and those of
// them that failed.
func (r connectResult) between(from, to time.Time) (n, failed int) {
	for _, ev := range r.Timeline {
		at := time.UnixMilli(ev.At)
		if !at.Before(from) && !at.After(to) {
			n++
			if strings.HasPrefix(ev.Result, "error: ") {
				failed++
			}
		}
	}
	return n, failed
}

// scrape reads the agent's metrics at the node IP, port 9810, from inside
// the node's network namespace.
func (e *nodeEnv) scrape(ctx context.Context) (string, error) {
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return e.n.NS.Dial(ctx, network, addr)
		},
		Proxy:             nil,
		DisableKeepAlives: true, // one scrape, one connection, closed
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(e.n.IP.String(), "9810")+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("get /metrics: %s", resp.Status)
	}
	return string(b), nil
}

// sample finds the value of the sample name{labels} (labels as the
// exposition prints them, sorted by name) in a scrape.
func sample(scrape, series string) (float64, bool) {
	for line := range strings.Lines(scrape) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err == nil
		}
	}
	return 0, false
}
