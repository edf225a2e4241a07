package lb

import (
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// Input is everything Compute needs. Slices may belong to services that are
// not in Services; they are ignored.
type Input struct {
	Services       []*corev1.Service
	EndpointSlices []*discoveryv1.EndpointSlice
}

// Compute returns the desired state for in. It never fails: objects it
// cannot use are skipped, and the reasons are returned as Warnings.
func Compute(in Input) (State, []Warning) {
	panic("TODO")
}

// Warning says why part of the input was not used.
type Warning struct {
	Object string // namespace/name of the object
	Reason string
}
