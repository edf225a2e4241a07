//go:build nodee2e

package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Images made by the test, imported into the node's containerd, never
// pulled.
const (
	probeImage   = "localhost/socklb-e2e/nodeprobe:test"
	corednsImage = "localhost/socklb-e2e/coredns:v1.15.0"
	// clusterDNS is kube-dns's ClusterIP (cluster.ServiceCIDR) and
	// kubelet's clusterDNS.
	clusterDNS = "198.19.0.10"
)

const (
	demoNS  = "demo"
	otherNS = "other"
	webPort = 80
)

var webLabels = map[string]string{"app": "web"}

func namespace(name string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
}

// webDeployment serves the pod's name on 8080. On SIGTERM it keeps
// serving for 3 s while the EndpointSlice marks it terminating, as a
// server that drains does; the readiness probe admits a new pod within
// a second of its start.
func webDeployment(replicas int32) *appsv1.Deployment {
	grace := int64(10)
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: demoNS},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: webLabels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: webLabels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: &grace,
					Containers: []corev1.Container{{
						Name:            "web",
						Image:           probeImage,
						ImagePullPolicy: corev1.PullNever,
						Args:            []string{"serve", "--port", "8080", "--linger", "3s"},
						Ports:           []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(8080)}},
							PeriodSeconds: 1,
						},
					}},
				},
			},
		},
	}
}

func webService(name string, typ corev1.ServiceType) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: demoNS},
		Spec: corev1.ServiceSpec{
			Type:     typ,
			Selector: webLabels,
			Ports:    []corev1.ServicePort{{Port: webPort, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}},
		},
	}
}

// clientPod idles; the scenarios run nodeprobe in it with kubectl exec.
func clientPod(ns string) *corev1.Pod {
	grace := int64(1)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "client", Namespace: ns},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name:            "client",
				Image:           probeImage,
				ImagePullPolicy: corev1.PullNever,
				Args:            []string{"idle"},
			}},
		},
	}
}

// create creates obj, retrying while the namespace's default
// ServiceAccount does not exist yet (the admission plugin refuses pods
// until the controller has made it).
func create[T any](t testing.TB, what string, fn func(ctx context.Context) (T, error)) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for {
		v, err := fn(ctx)
		if err == nil {
			return v
		}
		if ctx.Err() != nil || apierrors.IsAlreadyExists(err) || apierrors.IsInvalid(err) {
			t.Fatalf("create %s: %v", what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitPodReady waits for a pod to be Ready.
func (e *nodeEnv) waitPodReady(t testing.TB, ns, name string) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	waitFor(t, "pod "+ns+"/"+name+" Ready", 2*time.Minute, func(ctx context.Context) error {
		p, err := e.n.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !podReady(p) {
			return fmt.Errorf("phase %s, conditions %+v, containers %+v", p.Status.Phase, p.Status.Conditions, p.Status.ContainerStatuses)
		}
		pod = p
		return nil
	})
	return pod
}

// waitDeployment waits until a Deployment has rolled out and all its
// replicas are ready.
func (e *nodeEnv) waitDeployment(t testing.TB, ns, name string) time.Duration {
	t.Helper()
	return waitFor(t, "Deployment "+ns+"/"+name+" rolled out", 3*time.Minute, func(ctx context.Context) error {
		d, err := e.n.Client.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		want := int32(1)
		if d.Spec.Replicas != nil {
			want = *d.Spec.Replicas
		}
		s := d.Status
		if s.ObservedGeneration < d.Generation || s.UpdatedReplicas != want || s.ReadyReplicas != want || s.Replicas != want {
			return fmt.Errorf("replicas %d, updated %d, ready %d, want %d", s.Replicas, s.UpdatedReplicas, s.ReadyReplicas, want)
		}
		return nil
	})
}

// webPods are the names of the web Deployment's pods that are Ready and
// not terminating.
func (e *nodeEnv) webPods(ctx context.Context) (map[string]bool, error) {
	pods, err := e.n.Client.CoreV1().Pods(demoNS).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for i := range pods.Items {
		if p := &pods.Items[i]; p.DeletionTimestamp == nil && podReady(p) {
			out[p.Name] = true
		}
	}
	return out, nil
}
