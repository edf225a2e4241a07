//go:build nodee2e

package harness_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/socklb/socklb/tests/node/harness"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const podTimeout = 2 * time.Minute

// TestPrivilegedNodeComesUp brings up a node, runs a pod of the locally
// made pause image on it, checks that the pod's processes are under the
// node's cgroup root in the cgroup2 hierarchy (runc ignores a failed join
// silently) and in PID namespaces below the node's, and after teardown
// that nothing of the node is left on the host.
func TestPrivilegedNodeComesUp(t *testing.T) {
	var fp *harness.Footprint
	var upEnd time.Time
	t.Run("up", func(t *testing.T) {
		n := harness.Start(t, harness.Options{})
		fp = n.Footprint()

		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "smoke", Namespace: "default"},
			Spec: corev1.PodSpec{
				Containers: []corev1.Container{{
					Name:            "pause",
					Image:           harness.PauseImage,
					ImagePullPolicy: corev1.PullNever,
				}},
				TerminationGracePeriodSeconds: new(int64),
			},
		}
		created := time.Now()
		running := waitPodRunning(t, n, pod)
		t.Logf("pod %s Running %v after its creation, on %s at %s", pod.Name,
			time.Since(created).Round(time.Millisecond), running.Spec.NodeName, running.Status.PodIP)
		if running.Spec.NodeName != n.Name {
			t.Errorf("pod on node %q, want %q", running.Spec.NodeName, n.Name)
		}
		if ip, err := netip.ParseAddr(running.Status.PodIP); err != nil || !n.PodCIDR.Contains(ip) || ip == n.IP {
			t.Errorf("pod IP %q, want an address of %s other than the node's %s", running.Status.PodIP, n.PodCIDR, n.IP)
		}

		cid := strings.TrimPrefix(running.Status.ContainerStatuses[0].ContainerID, "containerd://")
		pids, err := n.PodPIDs(string(running.UID))
		if err != nil {
			t.Fatal(err)
		}
		if len(pids) == 0 {
			t.Fatalf("no process of pod %s (uid %s) under %s in any cgroup hierarchy", pod.Name, running.UID, n.CgroupRoot)
		}
		fp.AddPIDs(pids...)
		foundContainer := false
		for _, pid := range pids {
			cg := readFile(t, fmt.Sprintf("/proc/%d/cgroup", pid))
			v2 := ""
			for line := range strings.Lines(cg) {
				if p, ok := strings.CutPrefix(strings.TrimSpace(line), "0::"); ok {
					v2 = p
				}
			}
			if !strings.HasPrefix(v2, n.CgroupRoot+"/kubepods/") {
				t.Errorf("pod process %d: cgroup2 path %q, want below %s/kubepods/ (runc did not join the unified hierarchy)\n%s", pid, v2, n.CgroupRoot, cg)
			}
			if strings.HasSuffix(v2, "/"+cid) {
				foundContainer = true
				t.Logf("container %.12s: pid %d, /proc/%d/cgroup:\n%s", cid, pid, pid, cg)
			}
			// NSpid: the PID in the host's, the node's and the pod's PID
			// namespaces.
			for line := range strings.Lines(readFile(t, fmt.Sprintf("/proc/%d/status", pid))) {
				if f, ok := strings.CutPrefix(line, "NSpid:"); ok && len(strings.Fields(f)) < 3 {
					t.Errorf("pod process %d: NSpid%s: want a PID namespace below the node's", pid, strings.TrimRight(f, "\n"))
				}
			}
		}
		if !foundContainer {
			t.Errorf("no process in the container's cgroup (…/%s) among the pod's %v", cid, pids)
		}
		if phase := n.Kubectl(t, "get", "pod", pod.Name, "-o", "jsonpath={.status.phase}"); phase != "Running" {
			t.Errorf("kubectl get pod: phase %q, want Running", phase)
		}
		// The API server reaches the kubelet at the node IP (pause
		// writes no log: the output is empty, the call must succeed).
		n.Kubectl(t, "logs", pod.Name)
		// The ServiceAccount admission plugin gave the pod its token
		// volume, which kubelet mounted (the pod runs).
		tokenVolume := false
		for _, v := range running.Spec.Volumes {
			tokenVolume = tokenVolume || strings.HasPrefix(v.Name, "kube-api-access-")
		}
		if !tokenVolume {
			t.Errorf("pod has no kube-api-access volume: %+v", running.Spec.Volumes)
		}
		if host, _ := os.Hostname(); host == n.Name {
			t.Errorf("the host's name became the node's (%s)", host)
		}
		if got := strings.TrimSpace(n.Run(t, "hostname")); got != n.Name {
			t.Errorf("hostname inside the node = %q, want %q", got, n.Name)
		}
		// The check after teardown must see a running node.
		seen := strings.Join(fp.Leftovers(), "\n")
		for _, want := range []string{"(kubelet) is in the node's mnt namespace", "(containerd) is in the node's pid namespace",
			"(pause) is in cgroup ", n.CgroupRoot + "/kubepods/besteffort/pod" + string(running.UID),
			"cgroup directory /sys/fs/cgroup/unified" + n.CgroupRoot} {
			if !strings.Contains(seen, want) {
				t.Errorf("Leftovers of the running node lack %q:\n%s", want, seen)
			}
		}
		upEnd = time.Now()
	})
	if fp == nil {
		t.Fatal("the node did not come up; nothing to check after teardown")
	}
	if !upEnd.IsZero() {
		t.Logf("teardown took %v", time.Since(upEnd).Round(time.Millisecond))
	}
	left := fp.Leftovers()
	for _, l := range left {
		t.Errorf("left after teardown: %s", l)
	}
	if len(left) == 0 {
		t.Logf("after teardown nothing of node %s is left: no process, cgroup (%d hierarchies), mount, netns or changed sysctl", fp.Name, len(fp.CgroupDirs))
	}
}

// waitPodRunning creates pod, retrying while its ServiceAccount does not
// exist yet, and waits until it is Running with its container started.
func waitPodRunning(t *testing.T, n *harness.Node, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), podTimeout)
	defer cancel()
	pods := n.Client.CoreV1().Pods(pod.Namespace)
	var last error
	for {
		_, err := pods.Create(ctx, pod, metav1.CreateOptions{})
		if err == nil || apierrors.IsAlreadyExists(err) {
			break
		}
		// The ServiceAccount admission plugin refuses pods until the
		// serviceaccount controller has made the namespace's default
		// account.
		last = err
		if ctx.Err() != nil {
			t.Fatalf("create pod %s: %v", pod.Name, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for {
		got, err := pods.Get(ctx, pod.Name, metav1.GetOptions{})
		if err == nil && got.Status.Phase == corev1.PodRunning && len(got.Status.ContainerStatuses) > 0 &&
			got.Status.ContainerStatuses[0].State.Running != nil && got.Status.ContainerStatuses[0].ContainerID != "" {
			return got
		}
		if err == nil {
			last = fmt.Errorf("phase %s, conditions %+v, containers %+v", got.Status.Phase, got.Status.Conditions, got.Status.ContainerStatuses)
		} else {
			last = err
		}
		if ctx.Err() != nil {
			events, _ := n.Client.CoreV1().Events(pod.Namespace).List(context.Background(), metav1.ListOptions{})
			var ev []string
			if events != nil {
				for _, e := range events.Items {
					ev = append(ev, fmt.Sprintf("%s %s: %s", e.InvolvedObject.Name, e.Reason, e.Message))
				}
			}
			t.Fatalf("pod %s not Running after %v: %v\nevents:\n%s", pod.Name, podTimeout, last, strings.Join(ev, "\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

const failingHelperEnv = "SOCKLB_NODE_FAILING_HELPER"

// TestFailingNodeHelper is run by TestPrivilegedNodeCleanupOnFailure in a
// child test binary: it starts a node whose kubelet cannot start (an
// unknown flag), so that Start fails after the cgroups, the namespaces,
// containerd and the scheduler exist. Run normally it does nothing.
func TestFailingNodeHelper(t *testing.T) {
	if os.Getenv(failingHelperEnv) != "1" {
		return
	}
	harness.Start(t, harness.Options{KubeletArgs: []string{"--no-such-flag-on-purpose"}})
	t.Error("Start returned with a kubelet that cannot start")
}

// TestPrivilegedNodeCleanupOnFailure proves that a Start that fails half
// way leaves nothing behind once the failed test binary has exited.
func TestPrivilegedNodeCleanupOnFailure(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestFailingNodeHelper$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), failingHelperEnv+"=1")
	out, err := cmd.CombinedOutput()
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || !strings.Contains(string(out), "kubelet exited") {
		t.Fatalf("the helper should have failed on kubelet's exit: %v\n%s", err, out)
	}
	// The helper and its node are gone: nothing of the node can have
	// started after now.
	exited := harness.BootTicks()
	var fp harness.Footprint
	for line := range strings.Lines(string(out)) {
		if _, js, ok := strings.Cut(line, "node footprint: "); ok {
			if err := json.Unmarshal([]byte(js), &fp); err != nil {
				t.Fatalf("parse %q: %v", line, err)
			}
		}
	}
	if fp.Name == "" || len(fp.CgroupDirs) == 0 || len(fp.Namespaces) == 0 {
		t.Fatalf("the helper logged no footprint:\n%s", out)
	}
	fp.Before = exited
	left := fp.Leftovers()
	for _, l := range left {
		t.Errorf("left after a failed Start: %s", l)
	}
	if len(left) == 0 {
		t.Logf("a failed Start of node %s left nothing (%d cgroup hierarchies, namespaces %v)", fp.Name, len(fp.CgroupDirs), fp.Namespaces)
	}
}
