package cluster

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

// requestTimeout bounds each API call the helpers make.
const requestTimeout = 30 * time.Second

// ZoneLabel is the well-known topology label the EndpointSlice controller
// copies into each endpoint's zone.
const ZoneLabel = "topology.kubernetes.io/zone"

// ContainerName is the name of the single container of CreatePod's pods.
const ContainerName = "app"

func ctx(t testing.TB) (context.Context, context.CancelFunc) {
	return context.WithTimeout(t.Context(), requestTimeout)
}

// CreateNode creates a Node labelled with its hostname and, unless zone is
// empty, topology.kubernetes.io/zone=zone, with a Ready condition. No node
// controller runs, so it stays Ready.
func (c *Cluster) CreateNode(t testing.TB, name, zone string) *corev1.Node {
	t.Helper()
	ctx, cancel := ctx(t)
	defer cancel()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name:   name,
		Labels: map[string]string{corev1.LabelHostname: name},
	}}
	if zone != "" {
		node.Labels[ZoneLabel] = zone
	}
	node, err := c.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create node %s: %v", name, err)
	}
	now := metav1.Now()
	node.Status.Conditions = []corev1.NodeCondition{{
		Type: corev1.NodeReady, Status: corev1.ConditionTrue,
		Reason: "E2E", LastHeartbeatTime: now, LastTransitionTime: now,
	}}
	node, err = c.Client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("set node %s ready: %v", name, err)
	}
	return node
}

// CreateNamespace creates a namespace (no controller deletes its content
// later: the cluster goes away with the test).
func (c *Cluster) CreateNamespace(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := ctx(t)
	defer cancel()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
}

// CreatePod creates a pod bound to nodeName with one container ("app")
// that declares ports (name them for named targetPorts), and gives it the
// status a kubelet would: phase Running, podIP/podIPs, and Ready and
// ContainersReady False until [Cluster.SetPodReady]. ip may be empty (no
// address yet: the pod is in no EndpointSlice) or a comma-separated
// dual-stack pair ("198.18.0.10,2001:2::10"). The image is never pulled.
func (c *Cluster) CreatePod(t testing.TB, ns, name string, labels map[string]string, nodeName, ip string, ports ...corev1.ContainerPort) *corev1.Pod {
	t.Helper()
	ctx, cancel := ctx(t)
	defer cancel()
	var podIPs []corev1.PodIP
	if ip != "" {
		for _, s := range strings.Split(ip, ",") {
			a, err := netip.ParseAddr(strings.TrimSpace(s))
			if err != nil {
				t.Fatalf("pod %s/%s: ip %q: %v", ns, name, ip, err)
			}
			podIPs = append(podIPs, corev1.PodIP{IP: a.String()})
		}
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName: nodeName,
			Containers: []corev1.Container{{
				Name:  ContainerName,
				Image: "socklb-e2e.invalid/none:never-pulled",
				Ports: ports,
			}},
		},
	}
	pod, err := c.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s/%s: %v", ns, name, err)
	}
	now := metav1.Now()
	pod.Status.Phase = corev1.PodRunning
	pod.Status.StartTime = &now
	pod.Status.PodIPs = podIPs
	if len(podIPs) > 0 {
		pod.Status.PodIP = podIPs[0].IP
	}
	pod.Status.Conditions = []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.ContainersReady, Status: corev1.ConditionFalse, LastTransitionTime: now},
		{Type: corev1.PodReady, Status: corev1.ConditionFalse, LastTransitionTime: now},
	}
	pod, err = c.Client.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("set status of pod %s/%s: %v", ns, name, err)
	}
	return pod
}

// SetPodReady writes the pod's status as a kubelet would for a running
// pod whose readiness probe now passes (ready) or fails: phase Running,
// Ready and ContainersReady conditions. Its IPs stay as CreatePod set them.
func (c *Cluster) SetPodReady(t testing.TB, ns, name string, ready bool) *corev1.Pod {
	t.Helper()
	ctx, cancel := ctx(t)
	defer cancel()
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	var pod *corev1.Pod
	err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		p.Status.Phase = corev1.PodRunning
		setPodCondition(&p.Status, corev1.ContainersReady, status)
		setPodCondition(&p.Status, corev1.PodReady, status)
		pod, err = c.Client.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("set pod %s/%s ready=%v: %v", ns, name, ready, err)
	}
	return pod
}

func setPodCondition(s *corev1.PodStatus, typ corev1.PodConditionType, status corev1.ConditionStatus) {
	for i := range s.Conditions {
		if s.Conditions[i].Type == typ {
			if s.Conditions[i].Status != status {
				s.Conditions[i].Status = status
				s.Conditions[i].LastTransitionTime = metav1.Now()
			}
			return
		}
	}
	s.Conditions = append(s.Conditions, corev1.PodCondition{Type: typ, Status: status, LastTransitionTime: metav1.Now()})
}

// WaitFor polls cond every 50 ms until it returns true, and fails the test
// with what and cond's last error after timeout. Each call of cond gets a
// context bounded by the remaining time.
func WaitFor(t testing.TB, what string, timeout time.Duration, cond func(ctx context.Context) (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for {
		ctx, cancel := context.WithDeadline(t.Context(), deadline)
		ok, err := cond(ctx)
		cancel()
		if ok {
			return
		}
		last = err
		if time.Now().After(deadline) || t.Context().Err() != nil {
			break
		}
		time.Sleep(readyPoll)
	}
	if last != nil {
		t.Fatalf("%s: not true after %v: %v", what, timeout, last)
	}
	t.Fatalf("%s: not true after %v", what, timeout)
}
