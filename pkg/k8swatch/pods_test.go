package k8swatch

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestSlimKeepsWhatTheBypassReads(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "mesh", Name: "web-1", UID: "u-1", ResourceVersion: "7",
			Labels: map[string]string{"app": "web"}, Annotations: map[string]string{"socklb.io/bypass": "true"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}},
		Spec: corev1.PodSpec{NodeName: "node-a", HostNetwork: true,
			Containers: []corev1.Container{{Name: "app", Image: "web:1", Env: []corev1.EnvVar{{Name: "A", Value: "b"}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.1",
			ContainerStatuses: []corev1.ContainerStatus{{Name: "app"}}},
	}
	got, err := slim(pod)
	if err != nil {
		t.Fatal(err)
	}
	p := got.(*corev1.Pod)
	if p.Name != "web-1" || p.Namespace != "mesh" || p.UID != "u-1" || p.Labels["app"] != "web" ||
		p.Annotations["socklb.io/bypass"] != "true" || !p.Spec.HostNetwork || p.Spec.NodeName != "node-a" ||
		p.Status.Phase != corev1.PodRunning {
		t.Errorf("slim lost what the bypass reads: %+v", p)
	}
	if len(p.ManagedFields) != 0 || len(p.Spec.Containers) != 0 || p.Status.PodIP != "" || len(p.Status.ContainerStatuses) != 0 {
		t.Errorf("slim kept what the bypass does not read: %+v", p)
	}
	ns, _ := slim(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "mesh", Labels: map[string]string{"istio-injection": "enabled"},
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}}})
	if n := ns.(*corev1.Namespace); n.Labels["istio-injection"] != "enabled" || len(n.ManagedFields) != 0 {
		t.Errorf("namespace: %+v", n)
	}
	if other, _ := slim("tombstone"); other != "tombstone" {
		t.Errorf("slim changed what it does not know: %v", other)
	}
}
