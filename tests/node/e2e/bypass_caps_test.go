//go:build nodee2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/socklb/socklb/pkg/netnsid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const bypassCapsNS = "bypass-caps"

// bypassCapabilities is scenario 9, with the capabilities-only
// DaemonSet: can its agent find a pod's network namespace? That takes two
// things, checked on the real pause process of a real pod: seeing the
// pod's processes (the DaemonSet's hostPID) and opening their
// /proc/PID/ns/net with the DaemonSet's capabilities alone (setpriv on
// the host: the same ptrace access check). Then, the agent being unable
// to, it must say so for that pod, inspect why must say it too, and the
// pod is balanced as any other.
func (e *nodeEnv) bypassCapabilities(t *testing.T) {
	ds, err := e.n.Client.AppsV1().DaemonSets(agentNamespace).Get(t.Context(), agentDaemonSet, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sc := ds.Spec.Template.Spec.Containers[0].SecurityContext
	if sc == nil || sc.Capabilities == nil || (sc.Privileged != nil && *sc.Privileged) {
		t.Fatalf("the DaemonSet is not the capabilities-only one: %+v", sc)
	}
	caps, hostPID := sc.Capabilities.Add, ds.Spec.Template.Spec.HostPID
	agent, _ := e.waitDaemonSet(t, time.Minute)
	svc, err := e.n.Client.CoreV1().Services(demoNS).Get(t.Context(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(webPort))
	create(t, "namespace "+bypassCapsNS, func(ctx context.Context) (*corev1.Namespace, error) {
		return e.n.Client.CoreV1().Namespaces().Create(ctx, namespace(bypassCapsNS), metav1.CreateOptions{})
	})
	p := bypassPod(bypassCapsNS, "annotated", true, "selfserve", "--vip", svc.Spec.ClusterIP)
	create(t, "pod "+bypassCapsNS+"/annotated", func(ctx context.Context) (*corev1.Pod, error) {
		return e.n.Client.CoreV1().Pods(bypassCapsNS).Create(ctx, p, metav1.CreateOptions{})
	})
	uid := e.waitPodReady(t, bypassCapsNS, "annotated").UID

	pid := e.pausePID(t, uid)
	path := fmt.Sprintf("/proc/%d/ns/net", pid)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	var owner string
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, "Uid:"); ok {
			owner = strings.Fields(v)[0]
		}
	}
	want, err := netnsid.Cookie(path)
	if err != nil {
		t.Fatal(err)
	}
	read := func(caps []corev1.Capability) (string, error) {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "setpriv", append(setprivCaps(caps), e.probePath(t), "nscookie", path)...).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	same, sameErr := read(caps)
	withPtrace, ptraceErr := read(append(caps[:len(caps):len(caps)], "SYS_PTRACE"))
	t.Logf("bypass (capabilities): the DaemonSet has hostPID %v and capabilities %v; pod %s/annotated's pause process (uid %s) has netns cookie %d; a root process with only those capabilities opening %s: %s (%v); with SYS_PTRACE added: %s (%v)",
		hostPID, caps, bypassCapsNS, owner, want, path, same, sameErr, withPtrace, ptraceErr)
	var got map[string]uint64
	if ptraceErr != nil || json.Unmarshal([]byte(withPtrace), &got) != nil || got["cookie"] != want {
		t.Errorf("with SYS_PTRACE the pause process's namespace should read as %d: %s (%v)", want, withPtrace, ptraceErr)
	}
	canRead := sameErr == nil && !strings.Contains(same, "permission denied")
	if canRead {
		t.Logf("bypass (capabilities): the DaemonSet's capabilities suffice to open %s", path)
	}

	// The agent cannot see the pod (no hostPID), or may not open its
	// namespace (no SYS_PTRACE): it must say which, for this pod.
	wantReason := "CAP_SYS_PTRACE"
	if !hostPID {
		wantReason = "hostPID"
	}
	var reason string
	if !hostPID || !canRead {
		waitFor(t, "the capabilities agent to say why it cannot bypass "+bypassCapsNS+"/annotated", 30*time.Second, func(context.Context) error {
			for _, l := range e.agentJSONLogs(t, agent.Name) {
				if l["msg"] == "pod not bypassed as asked" && l["pod"] == bypassCapsNS+"/annotated" {
					reason, _ = l["reason"].(string)
					return nil
				}
			}
			return fmt.Errorf("no \"pod not bypassed as asked\" for %s/annotated yet", bypassCapsNS)
		})
		t.Logf("bypass (capabilities): agent %s: pod not bypassed as asked, pod %s/annotated, reason %q", agent.Name, bypassCapsNS, reason)
		if !strings.Contains(reason, wantReason) {
			t.Errorf("the agent's reason %q does not name %s", reason, wantReason)
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		out, err := e.kubectl(ctx, "-n", agentNamespace, "exec", agent.Name, "--", "socklb-agent", "inspect", "why", addr,
			"--client", bypassCapsNS+"/annotated", "--config=/etc/socklb/config.yaml")
		cancel()
		t.Logf("bypass (capabilities): inspect why --client %s/annotated: %s %v", bypassCapsNS, strings.TrimSpace(out), err)
		if err == nil || !strings.Contains(err.Error(), wantReason) {
			t.Errorf("inspect why --client %s/annotated: %v; want an error naming %s", bypassCapsNS, err, wantReason)
		}
	}
	st, err := e.agentStatus(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var r connectResult
	e.mustProbe(t, bypassCapsNS, "annotated", &r, "connect", "--addr", addr, "--count", "30")
	t.Logf("bypass (capabilities): /status bypassed %v; 30 connects from %s/annotated to %s: answers %v, failed %d",
		st.Bypassed, bypassCapsNS, addr, r.Backends, r.Failed)
	bypassed := len(st.Bypassed) == 1 && st.Bypassed[0].Pod == bypassCapsNS+"/annotated"
	switch {
	case r.Failed != 0:
		t.Errorf("connects failed: %v", r.Errors)
	case bypassed != (r.Backends["self"] == 30):
		t.Errorf("/status says bypassed %v, but the pod's connects answered %v", bypassed, r.Backends)
	case reason != "" && bypassed:
		t.Errorf("the agent said it cannot bypass the pod (%s), yet /status lists it", reason)
	}
	e.deleteNamespaces(t, bypassCapsNS)
}

// setprivCaps is the setpriv argument that leaves a root process only
// the Linux capabilities caps ("BPF", "NET_ADMIN", ...): as root, a
// program's capabilities after exec are its bounding set and inheritable
// ones.
func setprivCaps(caps []corev1.Capability) []string {
	set := "-all"
	for _, c := range caps {
		set += ",+" + strings.ToLower(string(c))
	}
	return []string{"--bounding-set", set, "--inh-caps", "-all", "--"}
}

// probePath is the nodeprobe binary the test built, on the host.
func (e *nodeEnv) probePath(t *testing.T) string {
	t.Helper()
	if e.probeBin == "" {
		t.Fatal("the test's nodeprobe binary is unknown")
	}
	return e.probeBin
}
