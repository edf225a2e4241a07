package k8swatch

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/socklb/socklb/pkg/lb"
)

// The slim copies compute to the same state as the objects they come
// from, and drop what the model does not read.
func TestSlimObjectKeepsWhatTheModelReads(t *testing.T) {
	yes, no := true, false
	port, name := int32(8080), "http"
	managed := []metav1.ManagedFieldsEntry{{Manager: "kube-controller-manager", Operation: metav1.ManagedFieldsOperationUpdate}}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web", UID: "u1", ResourceVersion: "7",
			CreationTimestamp: metav1.Unix(1000, 0), Labels: map[string]string{"app": "web"},
			Annotations: map[string]string{
				lb.AnnotationLBPolicy: "least-connections", lb.AnnotationOutlierDetection: "false",
				"kubectl.kubernetes.io/last-applied-configuration": "{...}",
			},
			ManagedFields: managed, Finalizers: []string{"service.kubernetes.io/load-balancer-cleanup"}},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeLoadBalancer, ClusterIP: "10.96.0.5", ClusterIPs: []string{"10.96.0.5"},
			ExternalIPs: []string{"192.0.2.7"},
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80,
				TargetPort: intstr.FromString("http"), NodePort: 30080}},
			SessionAffinity:       corev1.ServiceAffinityClientIP,
			ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
		},
		Status: corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{{IP: "192.0.2.9"}}},
			Conditions: []metav1.Condition{{Type: "x"}}},
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web-1", ResourceVersion: "9",
			Labels:        map[string]string{discoveryv1.LabelServiceName: "web", discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io"},
			Annotations:   map[string]string{"endpoints.kubernetes.io/last-change-trigger-time": "2026-12-03T00:00:00Z"},
			ManagedFields: managed},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.1.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: &yes}, NodeName: ptr("node-a"),
				Zone: ptr("zone-a"), Hints: &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: "zone-a"}}},
				TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "web-abc", UID: types.UID("p1")}},
			{Addresses: []string{"10.1.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: &no, Serving: &yes, Terminating: &yes},
				NodeName: ptr("node-b"), Zone: ptr("zone-b"), Hints: &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: "zone-b"}}}},
		},
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{labelZone: "zone-a"}},
		Status: corev1.NodeStatus{Images: []corev1.ContainerImage{{Names: []string{"big"}}}}}

	slim := func(o any) any {
		t.Helper()
		s, err := slimObject(o)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	ss, sl, sn := slim(svc).(*corev1.Service), slim(slice).(*discoveryv1.EndpointSlice), slim(node).(*corev1.Node)
	for _, n := range []lb.NodeInfo{{Name: "node-a", Zone: "zone-a"}, {Name: "node-b", Zone: "zone-b"}, {}} {
		full, _ := lb.Compute(lb.Input{Services: []*corev1.Service{svc}, EndpointSlices: []*discoveryv1.EndpointSlice{slice}, Node: n})
		thin, _ := lb.Compute(lb.Input{Services: []*corev1.Service{ss}, EndpointSlices: []*discoveryv1.EndpointSlice{sl}, Node: n})
		if !reflect.DeepEqual(full, thin) || len(full.Services) == 0 {
			t.Errorf("node %+v: the slim objects compute\n%+v\nthe full ones\n%+v", n, thin, full)
		}
	}
	if ss.ManagedFields != nil || sl.ManagedFields != nil || ss.Finalizers != nil || sl.Endpoints[0].TargetRef != nil ||
		sl.Annotations != nil || len(ss.Annotations) != 2 || sn.Status.Images != nil || sn.Labels[labelZone] != "zone-a" ||
		!ss.CreationTimestamp.Equal(&svc.CreationTimestamp) || ss.ResourceVersion != "7" {
		t.Errorf("slim copies keep too much or too little:\n%+v\n%+v\n%+v", ss, sl, sn)
	}
	if svc.ManagedFields == nil || slice.Endpoints[0].TargetRef == nil {
		t.Error("slimObject modified its input")
	}
	if tomb := (cacheTombstone{}); slim(tomb) != any(tomb) {
		t.Error("an object of another kind is not passed through")
	}
}

type cacheTombstone struct{}

func ptr[T any](v T) *T { return &v }
