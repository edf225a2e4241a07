//go:build nodee2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/socklb/socklb/pkg/netnsid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// The bypass scenario's objects. deploy/ selects no pod for bypass (a
// bypassed pod's ClusterIP connects are translated by nothing unless a
// mesh or kube-proxy does it, README "Service meshes"), so the scenario
// sets the namespace selector itself, the way a user would: a key of the
// agent's ConfigMap (its keys are the flag names), then a rollout.
const (
	bypassNS       = "bypass-ns"   // labelled: its pods are bypassed by the selector
	bypassPodsNS   = "bypass-pods" // unlabelled: the annotated pod, the control, the hostNetwork pod
	bypassLabel    = "socklb-test/bypass"
	bypassSelector = bypassLabel + "=ns"
	bypassKey      = "socklb.io/bypass"
	// startPods is how many pods measure the start window, in each of
	// its two runs (one at a time, all at once).
	startPods = 10
)

// bypassPod runs nodeprobe with args in a pod that may add the VIP to its
// own lo (NET_ADMIN in its own network namespace), optionally with the
// bypass annotation.
func bypassPod(ns, name string, annotated bool, args ...string) *corev1.Pod {
	p := clientPod(ns)
	p.Name = name
	c := &p.Spec.Containers[0]
	c.Name, c.Args = "probe", args
	c.SecurityContext = &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_ADMIN"}}}
	if annotated {
		p.Annotations = map[string]string{bypassKey: "true"}
	}
	return p
}

// bypassed is scenario 8: with --bypass-namespace-selector set, a pod in a
// matching namespace and a pod with the annotation reach their own
// listener on the VIP (untranslated) while a pod beside them, with the
// same listener, is balanced; a namespace's label flips its pod within a
// second each way; the start window of new pods is measured; a
// hostNetwork pod with the annotation is refused and the node stays
// balanced; `socklb-agent inspect why --client` in the agent pod says
// which pods are bypassed and why.
func (e *nodeEnv) bypassed(t *testing.T) {
	svc, err := e.n.Client.CoreV1().Services(demoNS).Get(t.Context(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vip := svc.Spec.ClusterIP
	addr := net.JoinHostPort(vip, strconv.Itoa(webPort))
	web, err := e.webPods(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	agent := e.configureBypass(t)
	c := e.n.Client
	// The namespaces are deleted at the end; a scenario that stops early
	// stops the suite, and the node's teardown removes them with the rest.
	for ns, labels := range map[string]map[string]string{bypassNS: {bypassLabel: "ns"}, bypassPodsNS: nil} {
		create(t, "namespace "+ns, func(ctx context.Context) (*corev1.Namespace, error) {
			n := namespace(ns)
			n.Labels = labels
			return c.CoreV1().Namespaces().Create(ctx, n, metav1.CreateOptions{})
		})
	}
	pods := []*corev1.Pod{
		bypassPod(bypassNS, "sidecar", false, "selfserve", "--vip", vip),
		bypassPod(bypassPodsNS, "annotated", true, "selfserve", "--vip", vip),
		bypassPod(bypassPodsNS, "plain", false, "selfserve", "--vip", vip),
	}
	for _, p := range pods {
		create(t, "pod "+p.Namespace+"/"+p.Name, func(ctx context.Context) (*corev1.Pod, error) {
			return c.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
		})
	}
	uids := map[string]types.UID{}
	for _, p := range pods {
		uids[p.Namespace+"/"+p.Name] = e.waitPodReady(t, p.Namespace, p.Name).UID
	}
	want := []string{bypassNS + "/sidecar", bypassPodsNS + "/annotated"}
	entries := e.waitBypassed(t, want)
	for _, en := range entries {
		if got := e.podNetnsCookie(t, uids[en.Pod]); en.Cookie != got || en.UID != uids[en.Pod] {
			t.Errorf("/status: %s bypassed with netns cookie %d (uid %s); its pause process's namespace is %d (uid %s)",
				en.Pod, en.Cookie, en.UID, got, uids[en.Pod])
		}
	}

	if !t.Run("untranslated_and_control", func(t *testing.T) { e.bypassUntranslated(t, addr, web) }) {
		t.FailNow()
	}
	t.Run("namespace_label_flips", func(t *testing.T) { e.bypassFlip(t, addr) })
	t.Run("start_window", func(t *testing.T) { e.bypassStartWindow(t, vip, agent) })
	t.Run("host_network_refused", func(t *testing.T) { e.bypassHostNetwork(t, addr, web, agent) })
	t.Run("inspect_why_in_the_agent_pod", func(t *testing.T) { e.bypassInspectWhy(t, addr, agent, entries) })
	// The pods gone, so are their entries (Pod delete events).
	e.deleteNamespaces(t, bypassNS, bypassPodsNS)
	e.waitBypassed(t, nil)
}

// configureBypass adds bypass-namespace-selector to the agent's ConfigMap
// and rolls the DaemonSet, as a user would; it returns the new agent pod.
// The ConfigMap is put back when the scenario ends; the agent keeps the
// selector until the next scenario replaces it (nothing matches it then).
func (e *nodeEnv) configureBypass(t *testing.T) string {
	cms := e.n.Client.CoreV1().ConfigMaps(agentNamespace)
	cm, err := cms.Get(t.Context(), agentDaemonSet, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	orig := cm.Data["config.yaml"]
	if strings.Contains(orig, "bypass-") {
		t.Fatalf("deploy/config.yaml already sets a bypass key; the scenario assumes deploy/ selects nothing:\n%s", orig)
	}
	cm.Data["config.yaml"] = orig + "bypass-namespace-selector: " + bypassSelector + "\n"
	if _, err := cms.Update(t.Context(), cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cm, err := cms.Get(ctx, agentDaemonSet, metav1.GetOptions{})
		if err == nil {
			cm.Data["config.yaml"] = orig
			_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
		}
		if err != nil {
			t.Errorf("put the agent's ConfigMap back: %v", err)
		}
	})
	start := time.Now()
	e.mustKubectl(t, "-n", agentNamespace, "rollout", "restart", "daemonset/"+agentDaemonSet)
	e.mustKubectl(t, "-n", agentNamespace, "rollout", "status", "daemonset/"+agentDaemonSet, "--timeout=2m")
	pod, _ := e.waitDaemonSet(t, 2*time.Minute)
	found := false
	for _, l := range e.agentJSONLogs(t, pod.Name) {
		if l["msg"] == "bypass: watching this node's pods" && l["namespace_selector"] == bypassSelector {
			found = true
		}
	}
	if !found {
		t.Fatalf("agent %s does not log that it watches pods with namespace selector %q", pod.Name, bypassSelector)
	}
	t.Logf("bypass: ConfigMap key bypass-namespace-selector: %s, DaemonSet rolled, agent %s Ready after %v",
		bypassSelector, pod.Name, time.Since(start).Round(time.Millisecond))
	return pod.Name
}

// bypassUntranslated: 50 connects to the VIP from each pod. The two
// bypassed pods get their own "self"; the control pod, whose namespace
// has the same listener on the VIP, reaches the web pods, and the
// agent's counter of web's connects grows by the control's 50 alone.
func (e *nodeEnv) bypassUntranslated(t *testing.T, addr string, web map[string]bool) {
	series := `socklb_service_connects_total{namespace="demo",port="",service="web"}`
	s, err := e.scrape(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	before, ok := sample(s, series)
	if !ok {
		t.Fatalf("no %s in the agent's metrics", series)
	}
	for _, c := range []struct {
		ns, pod  string
		bypassed bool
	}{{bypassNS, "sidecar", true}, {bypassPodsNS, "annotated", true}, {bypassPodsNS, "plain", false}} {
		var r connectResult
		e.mustProbe(t, c.ns, c.pod, &r, "connect", "--addr", addr, "--count", "50")
		t.Logf("bypass: 50 connects from %s/%s to %s: answers %v, getpeername %v, failed %d",
			c.ns, c.pod, addr, r.Backends, r.Peers, r.Failed)
		switch {
		case r.Failed != 0:
			t.Errorf("%s/%s: %d of 50 connects failed: %v", c.ns, c.pod, r.Failed, r.Errors)
		case c.bypassed && !maps.Equal(r.Backends, map[string]int{"self": 50}):
			t.Errorf("%s/%s is bypassed: want all 50 answered by its own listener on the VIP, got %v", c.ns, c.pod, r.Backends)
		case !c.bypassed && (r.Backends["self"] != 0 || len(r.Backends) != len(web)):
			t.Errorf("%s/%s is not bypassed: want the %d web pods, not its own listener; got %v", c.ns, c.pod, len(web), r.Backends)
		}
		for name := range r.Backends {
			if !c.bypassed && !web[name] {
				t.Errorf("%s/%s: answered by %q, not a web pod", c.ns, c.pod, name)
			}
		}
	}
	if s, err = e.scrape(t.Context()); err != nil {
		t.Fatal(err)
	}
	after, _ := sample(s, series)
	t.Logf("bypass: %s %v → %v (only the control's connects are socklb's)", series, before, after)
	if after-before != 50 {
		t.Errorf("%s grew by %v, want exactly the control's 50", series, after-before)
	}
}

// bypassFlip: a connect loop in the labelled namespace's pod (every
// 5 ms) while the label is removed and put back; each flip must show in
// the pod's connects within a second, and stay.
func (e *nodeEnv) bypassFlip(t *testing.T, addr string) {
	loop := e.startLoop(t, bypassNS, "sidecar", addr, 5*time.Millisecond, 2*time.Minute)
	begin := time.Now()
	time.Sleep(time.Second)
	unlabel := time.Now()
	e.patchNamespaceLabel(t, bypassNS, "null")
	time.Sleep(2 * time.Second)
	label := time.Now()
	e.patchNamespaceLabel(t, bypassNS, `"ns"`)
	time.Sleep(2 * time.Second)
	end := time.Now()
	r := loop.stop(t, begin, end)
	off, offN, err := flipAfter(r, unlabel, label, false)
	if err != nil {
		t.Errorf("namespace unlabelled: %v", err)
	}
	on, onN, err := flipAfter(r, label, end, true)
	if err != nil {
		t.Errorf("namespace labelled: %v", err)
	}
	if _, n, err := flipAfter(r, begin, unlabel, true); err != nil || n != 0 {
		t.Errorf("before the flips, while labelled: %d connects balanced before the first self (%v); want every one self", n, err)
	}
	t.Logf("bypass: namespace %s unlabelled → its pod balanced %v later (%d connects still self in between); labelled → bypassed %v later (%d balanced in between); the loop made %d connects, one every 5 ms",
		bypassNS, off.Round(time.Millisecond), offN, on.Round(time.Millisecond), onN, r.Connects)
	for what, d := range map[string]time.Duration{"unlabel": off, "label": on} {
		if d > time.Second {
			t.Errorf("%s took %v to reach the pod's connects, want within a second", what, d)
		}
	}
}

// patchNamespaceLabel sets the bypass label to value (JSON: null removes
// it).
func (e *nodeEnv) patchNamespaceLabel(t *testing.T, ns, value string) {
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%s}}}`, bypassLabel, value)
	if _, err := e.n.Client.CoreV1().Namespaces().Patch(t.Context(), ns, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// flipAfter looks at the loop's connects that began in [from, to): the
// first that answered "self" (wantSelf) or a backend (not), and checks
// that all before it answered the other way and all after it the same.
// It returns how long after from that connect began and how many came
// before it.
func flipAfter(r connectResult, from, to time.Time, wantSelf bool) (time.Duration, int, error) {
	flipped, before, n := -1, 0, 0
	for i, ev := range r.Timeline {
		at := time.UnixMilli(ev.At)
		if at.Before(from.Truncate(time.Millisecond)) || !at.Before(to) {
			continue
		}
		n++
		if strings.HasPrefix(ev.Result, "error: ") {
			return 0, 0, fmt.Errorf("a connect at %s failed: %s", at.Format(time.TimeOnly+".000"), ev.Result)
		}
		self := ev.Result == "self"
		switch {
		case flipped < 0 && self == wantSelf:
			flipped = i
		case flipped < 0:
			before++
		case self != wantSelf:
			return 0, 0, fmt.Errorf("flickered: a connect at %s answered %q after the flip", at.Format(time.TimeOnly+".000"), ev.Result)
		}
	}
	if flipped < 0 {
		return 0, 0, fmt.Errorf("none of %d connects in %s – %s answered as wanted (self %v)", n,
			from.Format(time.TimeOnly+".000"), to.Format(time.TimeOnly+".000"), wantSelf)
	}
	return time.UnixMilli(r.Timeline[flipped].At).Sub(from), before, nil
}

// firstResult is nodeprobe firstconnect's output.
type firstResult struct {
	StartedUnixUS int64          `json:"startedUnixUs"`
	SetupUS       int64          `json:"setupUs"`
	First         string         `json:"first"`
	FirstAtUS     int64          `json:"firstAtUs"`
	FirstReply    string         `json:"firstReply"`
	FirstSelfAtUS int64          `json:"firstSelfAtUs"`
	BeforeSelf    int            `json:"beforeSelf"`
	NotSelfAfter  int            `json:"notSelfAfter"`
	Attempts      int            `json:"attempts"`
	Results       map[string]int `json:"results"`
	StoppedBy     string         `json:"stoppedBy"`
}

// bypassStartWindow starts pods whose first container connects to the
// VIP from its first instant (nodeprobe firstconnect), half with the
// annotation, half in the labelled namespace: first one at a time, then
// as many at once (the agent's rounds then race several sandboxes).
func (e *nodeEnv) bypassStartWindow(t *testing.T, vip, agent string) {
	e.startWindow(t, vip, agent, "one at a time", "start", 1)
	e.startWindow(t, vip, agent, "all at once", "burst", startPods)
}

// startWindow starts startPods such pods, batch at a time. Each must
// reach its own listener within its 10 s and never leave it; a first
// connect that was rewritten is the documented start window, logged as
// a finding, not a failure.
func (e *nodeEnv) startWindow(t *testing.T, vip, agent, how, prefix string, batch int) {
	c := e.n.Client
	var firstSelf []time.Duration
	rewrittenFirst := 0
	processStart := map[string]time.Time{}
	for from := 0; from < startPods; from += batch {
		type started struct {
			ns, name, why string
			created       time.Time
		}
		var pods []started
		for i := from; i < min(from+batch, startPods); i++ {
			s := started{ns: bypassPodsNS, name: fmt.Sprintf("%s-%d", prefix, i), why: "annotation", created: time.Now()}
			if i%2 == 1 {
				s.ns, s.why = bypassNS, "namespace selector"
			}
			p := bypassPod(s.ns, s.name, s.ns == bypassPodsNS, "firstconnect", "--vip", vip, "--port", strconv.Itoa(webPort))
			create(t, "pod "+s.ns+"/"+s.name, func(ctx context.Context) (*corev1.Pod, error) {
				return c.CoreV1().Pods(s.ns).Create(ctx, p, metav1.CreateOptions{})
			})
			pods = append(pods, s)
		}
		for _, s := range pods {
			r := e.firstConnect(t, s.ns, s.name)
			pod := s.ns + "/" + s.name
			t.Logf("bypass start window (%s): pod %s (%s; result %v after its creation): first attempt %s at %.1f ms (reply %q), first self at %.1f ms after the process started, %d attempts before it, %d of %d after it not self, setup %.1f ms, results %v",
				how, pod, s.why, time.Since(s.created).Round(time.Millisecond), r.First, ms(r.FirstAtUS), r.FirstReply,
				ms(r.FirstSelfAtUS), r.BeforeSelf, r.NotSelfAfter, r.Attempts-r.BeforeSelf-1, ms(r.SetupUS), r.Results)
			if r.First != "self" {
				rewrittenFirst++
				t.Logf("FINDING: pod %s (%s): its first connect, %.1f ms after its process started, was not left alone: %s (%q)",
					pod, s.why, ms(r.FirstAtUS), r.First, r.FirstReply)
			}
			switch {
			case r.FirstSelfAtUS < 0 || r.StoppedBy != "confirmed":
				t.Errorf("pod %s: no untranslated connect within its %d attempts (%s): %v", pod, r.Attempts, r.StoppedBy, r.Results)
			case r.NotSelfAfter != 0:
				t.Errorf("pod %s: %d connects after the first self were not self: the bypass flickered: %v", pod, r.NotSelfAfter, r.Results)
			}
			for k := range r.Results {
				if strings.HasPrefix(k, "error: ") {
					t.Errorf("pod %s: connects failed: %v", pod, r.Results)
				}
			}
			if r.FirstSelfAtUS >= 0 {
				firstSelf = append(firstSelf, time.Duration(r.FirstSelfAtUS)*time.Microsecond)
			}
			processStart[pod] = time.UnixMicro(r.StartedUnixUS)
			if err := c.CoreV1().Pods(s.ns).Delete(t.Context(), s.name, metav1.DeleteOptions{}); err != nil {
				t.Errorf("delete pod %s: %v", pod, err)
			}
		}
	}
	// The agent's side: how long after each pod's cgroup last changed it
	// wrote the pod's entry, and how long before the pod's first
	// container process started (the same clock: one machine).
	var written, ahead []time.Duration
	for _, l := range e.agentJSONLogs(t, agent) {
		pod, _ := l["pod"].(string)
		start, ok := processStart[pod]
		if l["msg"] != "pod bypassed: socklb leaves its sockets alone" || !ok {
			continue
		}
		if v, ok := l["since_cgroup_created"].(float64); ok {
			written = append(written, time.Duration(v))
		}
		at, err := time.Parse(time.RFC3339Nano, fmt.Sprint(l["time"]))
		if err != nil {
			t.Errorf("agent log line for %s: time %v: %v", pod, l["time"], err)
			continue
		}
		ahead = append(ahead, start.Sub(at))
	}
	if len(firstSelf) != startPods || len(ahead) != startPods {
		t.Fatalf("%d of %d pods reached their own listener; the agent logged %d as bypassed", len(firstSelf), startPods, len(ahead))
	}
	lo, mid, hi := spread(firstSelf)
	wlo, wmid, whi := spread(written)
	alo, amid, ahi := spread(ahead)
	t.Logf("bypass start window over %d pods started %s: first attempt untranslated in %d, rewritten in %d; first self after the process started: min %v, median %v, max %v; the agent wrote the entry after the pod's cgroup last changed: min %v, median %v, max %v, and before the first container's process started (negative: after): min %v, median %v, max %v",
		startPods, how, startPods-rewrittenFirst, rewrittenFirst, lo, mid, hi, wlo, wmid, whi, alo, amid, ahi)
}

// firstConnect waits for a firstconnect pod's result in its log.
func (e *nodeEnv) firstConnect(t *testing.T, ns, name string) firstResult {
	t.Helper()
	var r firstResult
	waitFor(t, "pod "+ns+"/"+name+"'s firstconnect result", time.Minute, func(ctx context.Context) error {
		out, err := e.kubectl(ctx, "-n", ns, "logs", name)
		if err != nil {
			return err
		}
		line, _, _ := strings.Cut(out, "\n")
		if !strings.HasPrefix(line, "{") {
			return fmt.Errorf("no result yet: %q", out)
		}
		return json.Unmarshal([]byte(line), &r)
	})
	return r
}

func ms(us int64) float64 { return float64(us) / 1000 }

// spread is the minimum, median and maximum of ds, rounded to 0.1 ms.
func spread(ds []time.Duration) (lo, mid, hi time.Duration) {
	if len(ds) == 0 {
		return 0, 0, 0
	}
	s := slices.Sorted(slices.Values(ds))
	mid = s[len(s)/2]
	if len(s)%2 == 0 {
		mid = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	r := 100 * time.Microsecond
	return s[0].Round(r), mid.Round(r), s[len(s)-1].Round(r)
}

// bypassHostNetwork: a hostNetwork pod with the annotation is refused
// (the agent says so, naming the pod) and is balanced, as is the node.
func (e *nodeEnv) bypassHostNetwork(t *testing.T, addr string, web map[string]bool, agent string) {
	p := bypassPod(bypassPodsNS, "hostnet", true, "idle")
	p.Spec.HostNetwork = true
	p.Spec.Containers[0].SecurityContext = nil
	create(t, "pod "+bypassPodsNS+"/hostnet", func(ctx context.Context) (*corev1.Pod, error) {
		return e.n.Client.CoreV1().Pods(bypassPodsNS).Create(ctx, p, metav1.CreateOptions{})
	})
	e.waitPodReady(t, bypassPodsNS, "hostnet")
	var reason string
	waitFor(t, "the agent's refusal of "+bypassPodsNS+"/hostnet", 30*time.Second, func(context.Context) error {
		for _, l := range e.agentJSONLogs(t, agent) {
			if l["msg"] == "pod not bypassed as asked" && l["pod"] == bypassPodsNS+"/hostnet" && l["level"] == "WARN" {
				reason, _ = l["reason"].(string)
				return nil
			}
		}
		return fmt.Errorf("no WARN \"pod not bypassed as asked\" for %s/hostnet", bypassPodsNS)
	})
	t.Logf("bypass: agent %s: pod not bypassed as asked, pod %s/hostnet, reason %q", agent, bypassPodsNS, reason)
	if !strings.HasPrefix(reason, "hostNetwork") {
		t.Errorf("refusal reason %q, want it to begin with hostNetwork", reason)
	}
	node, err := netnsid.Cookie(fmt.Sprintf("/proc/%d/ns/net", e.n.HolderPID()))
	if err != nil {
		t.Fatal(err)
	}
	st, err := e.agentStatus(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range st.Bypassed {
		if en.Cookie == node || en.Pod == bypassPodsNS+"/hostnet" {
			t.Errorf("/status lists %+v: the node's own namespace (cookie %d) is bypassed", en, node)
		}
	}
	for _, pod := range []string{"hostnet", "plain"} {
		var r connectResult
		e.mustProbe(t, bypassPodsNS, pod, &r, "connect", "--addr", addr, "--count", "30")
		t.Logf("bypass: 30 connects from %s/%s to %s: answers %v, failed %d", bypassPodsNS, pod, addr, r.Backends, r.Failed)
		if r.Failed != 0 || len(r.Backends) != len(web) || r.Backends["self"] != 0 {
			t.Errorf("%s/%s: answers %v, failed %d %v; want every connect balanced over the %d web pods",
				bypassPodsNS, pod, r.Backends, r.Failed, r.Errors, len(web))
		}
	}
}

// whyReport is the part of `inspect why --json` the scenario reads.
type whyReport struct {
	Verdict string `json:"verdict"`
	Client  *struct {
		Name     string `json:"name"`
		Cookie   uint64 `json:"netnsCookie"`
		Bypassed bool   `json:"bypassed"`
		Why      string `json:"why"`
	} `json:"client"`
}

// bypassInspectWhy runs `socklb-agent inspect why` in the agent's pod
// (kubectl exec; the image has the binary on PATH) for each pod.
func (e *nodeEnv) bypassInspectWhy(t *testing.T, addr, agent string, entries []bypassEntry) {
	cookies := map[string]uint64{}
	for _, en := range entries {
		cookies[en.Pod] = en.Cookie
	}
	inspect := func(pod string, extra ...string) (string, error) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		return e.kubectl(ctx, append([]string{"-n", agentNamespace, "exec", agent, "--", "socklb-agent", "inspect", "why", addr,
			"--client", pod, "--config=/etc/socklb/config.yaml"}, extra...)...)
	}
	words, err := inspect(bypassNS + "/sidecar")
	if err != nil {
		t.Fatal(err)
	}
	// On one line: make node-e2e prints only the test's own lines.
	t.Logf("bypass: kubectl exec %s -- socklb-agent inspect why %s --client %s/sidecar --config=/etc/socklb/config.yaml: %s",
		agent, addr, bypassNS, strings.Join(strings.Fields(strings.ReplaceAll(strings.TrimSpace(words), "\n", " | ")), " "))
	if !strings.Contains(words, "client: pod "+bypassNS+"/sidecar") || !strings.Contains(words, ": bypassed, ") {
		t.Errorf("inspect why does not say that %s/sidecar is bypassed", bypassNS)
	}
	for _, c := range []struct {
		pod      string
		bypassed bool
		why      string
	}{
		{bypassNS + "/sidecar", true, "--bypass-namespace-selector " + bypassSelector},
		{bypassPodsNS + "/annotated", true, "annotation " + bypassKey},
		{bypassPodsNS + "/plain", false, ""},
		{bypassPodsNS + "/hostnet", false, "hostNetwork"},
	} {
		out, err := inspect(c.pod, "--json")
		if err != nil {
			t.Errorf("inspect why --client %s: %v", c.pod, err)
			continue
		}
		var r whyReport
		if err := json.Unmarshal([]byte(out), &r); err != nil || r.Client == nil {
			t.Errorf("inspect why --client %s --json: %v: %s", c.pod, err, out)
			continue
		}
		t.Logf("bypass: inspect why --client %s: bypassed %v (%s), netns cookie %d; verdict: %s", c.pod, r.Client.Bypassed,
			r.Client.Why, r.Client.Cookie, r.Verdict)
		if r.Client.Bypassed != c.bypassed || !strings.Contains(r.Client.Why, c.why) {
			t.Errorf("inspect why --client %s: bypassed %v, why %q; want %v and a why naming %q", c.pod, r.Client.Bypassed, r.Client.Why, c.bypassed, c.why)
		}
		if want, ok := cookies[c.pod]; ok && r.Client.Cookie != want {
			t.Errorf("inspect why --client %s: netns cookie %d, /status says %d", c.pod, r.Client.Cookie, want)
		}
	}
}
