package scenarios

import (
	"context"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/socklb/socklb/tests/e2e/cluster"
)

// TestPrivilegedServiceAnnotations: socklb.io/lb-policy and
// socklb.io/outlier-detection through a real API server. A valid value
// reaches the kernel's flags; an invalid one is warned about, naming the
// Service, and the default stays; removing the annotation restores the
// default. With nothing failing, connects reach exactly the endpoints
// kube-proxy would use, whatever the policy.
func TestPrivilegedServiceAnnotations(t *testing.T) {
	e := newEnv(t)
	a := e.node(t, "node-a", "")
	agent := e.startAgent(t, a)
	for i := 1; i <= 3; i++ {
		e.pod(t, fmt.Sprintf("web-%d", i), fmt.Sprintf("198.18.0.%d", i), "node-a", web, true)
	}
	svc := e.service(t, "web", web, func(s *corev1.Service) {
		s.Annotations = map[string]string{"socklb.io/lb-policy": "least-connections"}
	})
	fe := vip(svc, 80) + "/TCP"
	e.waitBackends(t, a, fe, 3)
	want := func(what, policy string, outlier bool) {
		t.Helper()
		cluster.WaitFor(t, what, waitLong, func(context.Context) (bool, error) {
			rows, _ := a.inspect(t)
			return rows[fe].Policy == policy && rows[fe].OutlierDetection == outlier, nil
		})
	}
	want("least-connections, outlier detection on by default", "least-connections", true)
	e.waitOutcomes(t, a, vip(svc, 80), "web-1", "web-2", "web-3")

	annotate := func(kv ...string) {
		t.Helper()
		s, err := e.c.Client.CoreV1().Services(testNS).Get(ctxFor(t), "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s.Annotations = map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			s.Annotations[kv[i]] = kv[i+1]
		}
		if _, err := e.c.Client.CoreV1().Services(testNS).Update(ctxFor(t), s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	annotate("socklb.io/lb-policy", "fewest", "socklb.io/outlier-detection", "maybe")
	want("an invalid policy: random; an invalid toggle: the default", "random", true)
	for _, w := range []string{`annotation socklb.io/lb-policy: \"fewest\" is not random or least-connections`,
		`annotation socklb.io/outlier-detection: \"maybe\" is not true or false`} {
		agent.WaitLog(t, w, waitLong)
	}
	if !strings.Contains(agent.Logs(), "object="+testNS+"/web") {
		t.Errorf("the warnings do not name the Service:\n%s", agent.Logs())
	}
	annotate("socklb.io/outlier-detection", "false")
	want("outlier detection off", "random", false)
	e.waitOutcomes(t, a, vip(svc, 80), "web-1", "web-2", "web-3")
	annotate()
	want("the annotations removed: the defaults", "random", true)
	e.waitOutcomes(t, a, vip(svc, 80), "web-1", "web-2", "web-3")
}
