// Package bypass keeps socklb out of chosen pods: it decides which of this
// node's pods a label selector or annotation opts out, finds their network
// namespaces, and keeps the pinned bypass map, which every program checks
// before rewriting anything, equal to that set. A bypassed pod's connects
// reach whatever its own namespace does with a ClusterIP (a mesh sidecar's
// redirect, kube-proxy's rules) untouched.
package bypass

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// Annotation opts one pod out ("true") or, against a selector that picks
// it, back in ("false").
const Annotation = "socklb.io/bypass"

// Rules pick the bypassed pods. A nil selector picks nothing.
type Rules struct {
	Namespaces labels.Selector
	Pods       labels.Selector
}

// ParseSelector parses a --bypass-*-selector value; "" selects nothing
// (not everything, as an empty label selector would).
func ParseSelector(s string) (labels.Selector, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	sel, err := labels.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("parse bypass selector %q: %w", s, err)
	}
	if sel.Empty() {
		return nil, nil
	}
	return sel, nil
}

// Decision is the verdict on one pod.
type Decision struct {
	Bypass bool
	// Why says what decided, in words: the annotation, a selector, or
	// why the pod cannot be bypassed.
	Why string
	// Warning is set for an annotation value that is not "true" or
	// "false" (ignored).
	Warning string
	// NamespaceUnknown: only the namespace selector could choose the
	// pod, and its namespace's labels are not known yet (the namespace
	// watch lags the pod watch): undecided, not "not chosen".
	NamespaceUnknown bool
}

// Decide says whether pod is bypassed: its annotation when it is "true"
// or "false", else whether its labels match the pod selector or its
// namespace's labels (nsLabels; nil when the namespace is unknown, which
// leaves a pod only the namespace selector could choose undecided) the
// namespace selector. A pod on the host's network is never bypassed: its
// namespace is the node's, and bypassing it would bypass the node.
func Decide(pod *corev1.Pod, nsLabels map[string]string, r Rules) Decision {
	var d Decision
	v, annotated := pod.Annotations[Annotation]
	switch {
	case !annotated:
	case v == "true":
		d = Decision{Bypass: true, Why: "annotation " + Annotation + `: "true"`}
	case v == "false":
		d = Decision{Why: "annotation " + Annotation + `: "false"`}
	default:
		d.Warning = fmt.Sprintf("annotation %s: %q is not true or false; ignored", Annotation, v)
		annotated = false
	}
	if !annotated {
		switch {
		case r.Pods != nil && r.Pods.Matches(labels.Set(pod.Labels)):
			d.Bypass, d.Why = true, "its labels match --bypass-pod-selector "+r.Pods.String()
		case r.Namespaces != nil && nsLabels == nil && !pod.Spec.HostNetwork:
			d.NamespaceUnknown = true
			d.Why = "undecided: the labels of namespace " + pod.Namespace + " are not known yet (--bypass-namespace-selector)"
		case r.Namespaces != nil && r.Namespaces.Matches(labels.Set(nsLabels)):
			d.Bypass, d.Why = true, "its namespace's labels match --bypass-namespace-selector "+r.Namespaces.String()
		}
	}
	if d.Bypass && pod.Spec.HostNetwork {
		return Decision{Why: "hostNetwork: the pod shares the node's network namespace, which is never bypassed (" + d.Why + ")",
			Warning: d.Warning}
	}
	return d
}
