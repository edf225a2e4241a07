package k8swatch

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// annotationPrefix is the prefix of the only annotations the model reads
// (lb.AnnotationLBPolicy, lb.AnnotationOutlierDetection).
const annotationPrefix = "socklb.io/"

// slimObject keeps of the Services, EndpointSlices and the Node what the
// model reads (and inspect shows): the informers' caches hold one copy of
// each object of the cluster, and managedFields, other controllers'
// annotations, endpoints' targetRefs and a Node's images and status are
// most of their bytes. The model relies on an object in the cache never
// being modified; each event's object is a new one, and so is its slim
// copy.
func slimObject(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Service:
		return &corev1.Service{
			TypeMeta:   o.TypeMeta,
			ObjectMeta: slimServiceMeta(o.ObjectMeta),
			Spec:       o.Spec,
			Status:     corev1.ServiceStatus{LoadBalancer: o.Status.LoadBalancer},
		}, nil
	case *discoveryv1.EndpointSlice:
		s := &discoveryv1.EndpointSlice{
			TypeMeta:    o.TypeMeta,
			ObjectMeta:  objectMeta(o.ObjectMeta, o.Labels, nil),
			AddressType: o.AddressType,
			Ports:       o.Ports,
			Endpoints:   make([]discoveryv1.Endpoint, len(o.Endpoints)),
		}
		for i, e := range o.Endpoints {
			s.Endpoints[i] = discoveryv1.Endpoint{Addresses: e.Addresses, Conditions: e.Conditions,
				NodeName: e.NodeName, Zone: e.Zone, Hints: e.Hints}
		}
		return s, nil
	case *corev1.Node:
		return &corev1.Node{TypeMeta: o.TypeMeta, ObjectMeta: objectMeta(o.ObjectMeta, o.Labels, nil)}, nil
	}
	return obj, nil // tombstones and the like
}

// slimServiceMeta keeps a Service's names, versions, creation time (the
// older Service wins a contested frontend), labels (selectors) and
// socklb's annotations.
func slimServiceMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	var ann map[string]string
	for k, v := range m.Annotations {
		if strings.HasPrefix(k, annotationPrefix) {
			if ann == nil {
				ann = make(map[string]string)
			}
			ann[k] = v
		}
	}
	return objectMeta(m, m.Labels, ann)
}

func objectMeta(m metav1.ObjectMeta, labels, annotations map[string]string) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Namespace: m.Namespace, Name: m.Name, UID: m.UID, ResourceVersion: m.ResourceVersion,
		Generation: m.Generation, CreationTimestamp: m.CreationTimestamp, DeletionTimestamp: m.DeletionTimestamp,
		Labels: labels, Annotations: annotations,
	}
}
