package lb

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestServiceAnnotations: socklb.io/lb-policy and
// socklb.io/outlier-detection reach every frontend of the Service; a bad
// value is warned about, naming the Service, and the default applies;
// outlier detection never applies to UDP.
func TestServiceAnnotations(t *testing.T) {
	for _, tc := range []struct {
		name        string
		annotations map[string]string
		def         bool
		policy      Policy
		outlier     bool
		warning     string
	}{
		{name: "none, default on", def: true, policy: PolicyRandom, outlier: true},
		{name: "none, default off", def: false, policy: PolicyRandom, outlier: false},
		{name: "least-connections", annotations: map[string]string{AnnotationLBPolicy: "least-connections"},
			def: true, policy: PolicyLeastConnections, outlier: true},
		{name: "random spelled out", annotations: map[string]string{AnnotationLBPolicy: " random "},
			def: true, policy: PolicyRandom, outlier: true},
		{name: "bad policy", annotations: map[string]string{AnnotationLBPolicy: "round-robin"},
			def: true, policy: PolicyRandom, outlier: true, warning: `"round-robin" is not random or least-connections; using random`},
		{name: "outlier off", annotations: map[string]string{AnnotationOutlierDetection: "false"},
			def: true, outlier: false},
		{name: "outlier on over a default off", annotations: map[string]string{AnnotationOutlierDetection: "true"},
			def: false, outlier: true},
		{name: "bad toggle", annotations: map[string]string{AnnotationOutlierDetection: "yes"},
			def: false, outlier: false, warning: `"yes" is not true or false; using the agent's default (false)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := svc("web", ips("198.19.0.10"), sport("http", corev1.ProtocolTCP, 80), sport("dns", corev1.ProtocolUDP, 53))
			s.Annotations = tc.annotations
			st, warnings := Compute(Input{Services: []*corev1.Service{s}, Defaults: Defaults{OutlierDetection: tc.def}})
			if len(st.Services) != 2 {
				t.Fatalf("%d frontends, want 2", len(st.Services))
			}
			for _, f := range st.Services {
				if f.Policy != tc.policy {
					t.Errorf("%s: policy %s, want %s", f.Frontend, f.Policy, tc.policy)
				}
				want := tc.outlier && f.Frontend.Proto == TCP
				if f.OutlierDetection != want {
					t.Errorf("%s: outlier detection %t, want %t", f.Frontend, f.OutlierDetection, want)
				}
			}
			switch {
			case tc.warning == "" && len(warnings) > 0:
				t.Errorf("warnings %v, want none", warnings)
			case tc.warning != "" && (len(warnings) != 1 || !strings.Contains(warnings[0].Reason, tc.warning) || warnings[0].Object != "default/web"):
				t.Errorf("warnings %v, want one for default/web containing %q", warnings, tc.warning)
			}
		})
	}
}

// TestComputerRedoesAllWhenDefaultsChange: the Computer caches per
// Service, so a changed default must not leave stale frontends.
func TestComputerRedoesAllWhenDefaultsChange(t *testing.T) {
	s := svc("web", ips("198.19.0.10"), sport("http", corev1.ProtocolTCP, 80))
	c := NewComputer()
	in := Input{Services: []*corev1.Service{s}, Defaults: Defaults{OutlierDetection: true}}
	if st, _ := c.Compute(in); !st.Services[0].OutlierDetection {
		t.Fatal("default on not applied")
	}
	in.Defaults.OutlierDetection = false
	if st, _ := c.Compute(in); st.Services[0].OutlierDetection {
		t.Error("a changed default left the cached frontend as it was")
	}
}
