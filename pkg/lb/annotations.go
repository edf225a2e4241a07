package lb

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Service annotations socklb reads: per-Service choices that Kubernetes'
// Service API has no field for.
const (
	// AnnotationLBPolicy picks how a connect chooses among the backends:
	// "random" (the default, as kube-proxy) or "least-connections".
	AnnotationLBPolicy = "socklb.io/lb-policy"
	// AnnotationOutlierDetection turns passive outlier ejection on
	// ("true") or off ("false") for one Service; without it the agent's
	// default applies.
	AnnotationOutlierDetection = "socklb.io/outlier-detection"
)

// Policy is how a connect picks a backend when no affinity holds.
type Policy uint8

// Policies. The zero value is random, kube-proxy's choice.
const (
	// PolicyRandom: any backend, each with the same chance.
	PolicyRandom Policy = iota
	// PolicyLeastConnections: of two random backends, the one with fewer
	// open connections from this node (the power of two choices).
	PolicyLeastConnections
)

func (p Policy) String() string {
	switch p {
	case PolicyRandom:
		return "random"
	case PolicyLeastConnections:
		return "least-connections"
	default:
		return fmt.Sprintf("policy(%d)", uint8(p))
	}
}

// policyOf reads AnnotationLBPolicy. A value it does not know is warned
// about and the Service keeps the default (random): a typo must not
// change how a Service balances in a way nobody asked for.
func policyOf(svc *corev1.Service, name types.NamespacedName, w *warnings) Policy {
	v, ok := svc.Annotations[AnnotationLBPolicy]
	if !ok {
		return PolicyRandom
	}
	switch strings.TrimSpace(v) {
	case "random":
		return PolicyRandom
	case "least-connections":
		return PolicyLeastConnections
	}
	w.add(name, "annotation %s: %q is not random or least-connections; using random", AnnotationLBPolicy, v)
	return PolicyRandom
}

// outlierOf reads AnnotationOutlierDetection. A value that is not "true"
// or "false" is warned about and def, the agent's default, applies.
func outlierOf(svc *corev1.Service, name types.NamespacedName, def bool, w *warnings) bool {
	v, ok := svc.Annotations[AnnotationOutlierDetection]
	if !ok {
		return def
	}
	switch strings.TrimSpace(v) {
	case "true":
		return true
	case "false":
		return false
	}
	w.add(name, "annotation %s: %q is not true or false; using the agent's default (%t)", AnnotationOutlierDetection, v, def)
	return def
}
