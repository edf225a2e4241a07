package scenarios

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/socklb/socklb/internal/sandbox"
	"github.com/socklb/socklb/internal/testagent"
	"github.com/socklb/socklb/pkg/netnsid"
	"github.com/socklb/socklb/tests/e2e/cluster"
)

// clientPod is a pod as the kubelet runs it, without a kubelet: a Pod
// object bound to the node, a network namespace of its own, and a
// "pause" process in that namespace inside the cgroup kubepods/
// besteffort/pod<uid>/pause below the node's cgroup. In its namespace a
// listener on the Service's VIP answers "self" (as a sidecar's redirect
// target would) and one on the backend's address answers "rewritten"
// (where socklb sends a connect it rewrites).
type clientPod struct {
	name  string
	node  *node
	uid   types.UID
	netns *sandbox.Netns
	cg    *sandbox.Cgroup
	// joined is when the pause process entered the pod's cgroup.
	joined time.Time
}

func (e *env) clientPod(t *testing.T, n *node, ns, name string, labels, annotations map[string]string, vip, backend string) *clientPod {
	t.Helper()
	pod, err := e.c.Client.CoreV1().Pods(ns).Create(t.Context(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels, Annotations: annotations},
		Spec: corev1.PodSpec{NodeName: n.name, Containers: []corev1.Container{{
			Name: cluster.ContainerName, Image: "socklb-e2e.invalid/none:never-pulled"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s/%s: %v", ns, name, err)
	}
	p := &clientPod{name: name, node: n, uid: pod.UID, netns: sandbox.NewNetns(t)}
	vipAddr, _, _ := strings.Cut(vip, ":")
	backendAddr, backendPort, _ := strings.Cut(backend, ":")
	port, _ := strconv.Atoi(backendPort)
	testagent.StartPod(t, p.netns, "self", vipAddr, 80)
	testagent.StartPod(t, p.netns, "rewritten", backendAddr, uint16(port))
	p.cg = n.cg.Child(t, filepath.Join("kubepods", "besteffort", "pod"+string(pod.UID), "pause"))
	want, err := netnsid.Cookie(p.netns.Path())
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nsenter", "--net="+p.netns.Path(), "sleep", "600")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	// Into the cgroup only once in the pod's namespace, as the sandbox's
	// pause is by the time it is the cgroup's only process.
	path := "/proc/" + strconv.Itoa(cmd.Process.Pid) + "/ns/net"
	cluster.WaitFor(t, name+"'s pause in its namespace", waitLong, func(context.Context) (bool, error) {
		c, err := netnsid.Cookie(path)
		return err == nil && c == want, nil
	})
	if err := p.cg.AddProc(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	p.joined = time.Now()
	return p
}

// ask connects to addr from the pod's network namespace, in a socket
// of the node's cgroup: the programs are attached there and the bypass
// goes by namespace, not cgroup. The test process never enters the pod's
// cgroup: the agent would count it among the pod's processes, the
// earliest started, and take its namespace (the test's) for the pod's.
func (p *clientPod) ask(t *testing.T, addr string) string {
	t.Helper()
	var got string
	within(t, p.node, func() {
		answer, err := testagent.Ask(p.netns, "tcp4", addr)
		if err != nil {
			answer = "error: " + err.Error()
		}
		got = answer
	})
	return got
}

// waitAnswer waits until the pod's connects to addr get want, and
// returns how long that took from start.
func (p *clientPod) waitAnswer(t *testing.T, addr, want string, start time.Time, within time.Duration) time.Duration {
	t.Helper()
	var last string
	for time.Since(start) < within {
		if last = p.ask(t, addr); last == want {
			return time.Since(start)
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("%s: connects to %s still answer %q after %v, want %q", p.name, addr, last, within, want)
	return 0
}

func (e *env) labelNamespace(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	ns, err := e.c.Client.CoreV1().Namespaces().Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns.Labels = labels
	if _, err := e.c.Client.CoreV1().Namespaces().Update(t.Context(), ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestPrivilegedBypass: pods chosen by --bypass-namespace-selector,
// --bypass-pod-selector or the socklb.io/bypass annotation connect to a
// ClusterIP untranslated (their own listener on the VIP answers, as a
// sidecar would), while a pod beside them is balanced; labelling and
// unlabelling a namespace flips its pods within a second; a pod's start
// window is measured; a hostNetwork pod is never bypassed.
func TestPrivilegedBypass(t *testing.T) {
	e := newEnv(t)
	a := e.node(t, "node-a", "")
	agent := e.startAgent(t, a, "--bypass-namespace-selector=socklb-e2e/bypass=ns",
		"--bypass-pod-selector=socklb-e2e/bypass=pod")
	e.pod(t, "web-1", "198.18.0.1", "node-a", web, true)
	svc := e.service(t, "web", web, nil)
	fe := vip(svc, 80) + "/TCP"
	e.waitBackends(t, a, fe, 1)
	addr, backend := vip(svc, 80), hostPort("198.18.0.1", podPort)
	e.c.CreateNamespace(t, "mesh")

	control := e.clientPod(t, a, testNS, "control", nil, nil, addr, backend)
	annotated := e.clientPod(t, a, testNS, "annotated", nil, map[string]string{"socklb.io/bypass": "true"}, addr, backend)
	window := annotated.waitAnswer(t, addr, "self", annotated.joined, 5*time.Second)
	t.Logf("the annotated pod's connects were left alone %v after its pause joined its cgroup", window.Round(100*time.Microsecond))
	labelled := e.clientPod(t, a, testNS, "labelled", map[string]string{"socklb-e2e/bypass": "pod"}, nil, addr, backend)
	labelled.waitAnswer(t, addr, "self", labelled.joined, 5*time.Second)
	inMesh := e.clientPod(t, a, "mesh", "in-mesh", nil, nil, addr, backend)
	if got := control.ask(t, addr); got != "rewritten" {
		t.Errorf("the control pod's connect: %q, want rewritten to the backend", got)
	}
	if got := inMesh.ask(t, addr); got != "rewritten" {
		t.Errorf("a pod of the unlabelled namespace: %q, want rewritten", got)
	}

	// The namespace labelled, then not: its pod flips each time.
	start := time.Now()
	e.labelNamespace(t, "mesh", map[string]string{"socklb-e2e/bypass": "ns"})
	on := inMesh.waitAnswer(t, addr, "self", start, time.Second)
	start = time.Now()
	e.labelNamespace(t, "mesh", nil)
	off := inMesh.waitAnswer(t, addr, "rewritten", start, time.Second)
	t.Logf("namespace labelled: bypassed after %v; unlabelled: balanced again after %v", on.Round(time.Millisecond), off.Round(time.Millisecond))
	if got := control.ask(t, addr); got != "rewritten" {
		t.Errorf("the control pod's connect: %q, want rewritten", got)
	}

	// A hostNetwork pod asking is refused, loudly: bypassing it would
	// bypass the node.
	hostPod, err := e.c.Client.CoreV1().Pods(testNS).Create(t.Context(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: "on-host", Annotations: map[string]string{"socklb.io/bypass": "true"}},
		Spec: corev1.PodSpec{NodeName: a.name, HostNetwork: true, Containers: []corev1.Container{{
			Name: cluster.ContainerName, Image: "socklb-e2e.invalid/none:never-pulled"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	agent.WaitLog(t, `pod=`+testNS+`/`+hostPod.Name+` reason="hostNetwork: the pod shares the node's network namespace`, waitLong)

	// The annotation removed: balanced again.
	p, err := e.c.Client.CoreV1().Pods(testNS).Get(t.Context(), "annotated", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Annotations = nil
	if _, err := e.c.Client.CoreV1().Pods(testNS).Update(t.Context(), p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	annotated.waitAnswer(t, addr, "rewritten", time.Now(), time.Second)
	if got := labelled.ask(t, addr); got != "self" {
		t.Errorf("the labelled pod: %q, want still bypassed", got)
	}
	for _, w := range []string{fmt.Sprintf(`pod=%s/labelled why="its labels match --bypass-pod-selector`, testNS),
		fmt.Sprintf(`msg="pod no longer bypassed: socklb balances its connects again" job=bypass pod=%s/annotated`, testNS)} {
		if !strings.Contains(agent.Logs(), w) {
			t.Errorf("the agent's log lacks %q", w)
		}
	}

	// The agent stopped: the pinned map keeps the bypass; the next agent
	// keeps it too.
	if err := agent.Stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if got := labelled.ask(t, addr); got != "self" {
		t.Errorf("with no agent: the labelled pod's connect %q, want still bypassed", got)
	}
	e.startAgent(t, a, "--bypass-namespace-selector=socklb-e2e/bypass=ns", "--bypass-pod-selector=socklb-e2e/bypass=pod")
	if got := labelled.ask(t, addr); got != "self" {
		t.Errorf("after a restart: the labelled pod's connect %q, want bypassed", got)
	}
	if got := control.ask(t, addr); got != "rewritten" {
		t.Errorf("after a restart: the control pod's connect %q, want rewritten", got)
	}
}
