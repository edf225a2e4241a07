package why

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/maps"
	"github.com/socklb/socklb/pkg/reconciler"
)

func TestParseQuery(t *testing.T) {
	for _, tt := range []struct {
		in, want string
		err      bool
	}{
		{in: "10.96.0.1:443", want: "10.96.0.1:443"},
		{in: "10.96.0.10:53/UDP", want: "10.96.0.10:53/udp"},
		{in: " [fd00::1]:80/tcp ", want: "[fd00::1]:80/tcp"},
		{in: "[::ffff:10.0.0.1]:80", want: "10.0.0.1:80"},
		{in: "10.96.0.1", err: true},
		{in: "10.96.0.1:0", err: true},
		{in: "10.96.0.1:80/sctp", err: true},
		{in: "web:80", err: true},
		{in: "[fe80::1%eth0]:80", err: true},
	} {
		q, err := ParseQuery(tt.in)
		if tt.err {
			if !errors.Is(err, ErrQuery) {
				t.Errorf("ParseQuery(%q) = %v, %v; want ErrQuery", tt.in, q, err)
			}
			continue
		}
		if err != nil || QueryString(q) != tt.want {
			t.Errorf("ParseQuery(%q) = %s, %v; want %s", tt.in, QueryString(q), err, tt.want)
		}
	}
}

func objects() lb.Input {
	port := int32(8080)
	name := "http"
	yes, no := true, false
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"},
		Spec: corev1.ServiceSpec{
			ClusterIP: "10.96.0.5", ClusterIPs: []string{"10.96.0.5"},
			Ports:           []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}},
			SessionAffinity: corev1.ServiceAffinityClientIP,
		},
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.1.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: &yes}},
			{Addresses: []string{"10.1.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: &no}},
		},
	}
	return lb.Input{Services: []*corev1.Service{svc}, EndpointSlices: []*discoveryv1.EndpointSlice{slice}}
}

// node returns a Node over a fake kernel that holds what a sync of in
// wrote.
func node(t *testing.T, in lb.Input) (Node, *maps.Fake) {
	t.Helper()
	f := maps.NewFake()
	st, _ := lb.Compute(in)
	if _, err := reconciler.New(f, nil).Apply(st); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	return Node{
		Input:   func() (lb.Input, bool) { return in, true },
		Facts:   func() lb.Facts { return lb.Facts{} },
		Kernel:  f,
		Now:     func() time.Time { return now },
		BootNow: func() (time.Duration, error) { return time.Hour, nil },
	}, f
}

func TestExplainJoinsTheKernel(t *testing.T) {
	in := objects()
	n, f := node(t, in)
	q, _ := ParseQuery("10.96.0.5:80/tcp")
	r, err := Explain(n, q, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Frontends) != 1 {
		t.Fatalf("%+v, want one frontend", r)
	}
	fr := r.Frontends[0]
	if fr.Kernel == nil || strings.Join(fr.Kernel.Backends, ",") != "10.1.0.1:8080" || fr.Differs != "" {
		t.Errorf("kernel %+v, differs %q; want 10.1.0.1:8080 and no difference", fr.Kernel, fr.Differs)
	}
	if !strings.Contains(r.Verdict, "balanced over 1 backend ") {
		t.Errorf("verdict %q", r.Verdict)
	}
	var buf bytes.Buffer
	if err := Render(&buf, r, n.Now()); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"10.1.0.1:8080", "in", "ready", "10.1.0.2:8080", "out", "not ready", "kernel: frontend id"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("rendered:\n%s\nwant %q in it", buf.String(), want)
		}
	}

	// The kernel no longer holds what the plan says: said loudly.
	if err := f.DeleteService(maps.Frontend{Addr: netip.MustParseAddr("10.96.0.5"), Port: 80, Proto: maps.ProtoTCP}); err != nil {
		t.Fatal(err)
	}
	r, err = Explain(n, q, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fr := r.Frontends[0]; fr.Kernel != nil || !strings.Contains(fr.Differs, "the maps do not") {
		t.Errorf("after the delete: kernel %+v, differs %q", fr.Kernel, fr.Differs)
	}
	buf.Reset()
	_ = Render(&buf, r, n.Now())
	if !strings.Contains(buf.String(), "KERNEL DIFFERS FROM THE PLAN") {
		t.Errorf("rendered:\n%s\nwant the loud line", buf.String())
	}
}

func TestExplainClientAffinity(t *testing.T) {
	in := objects()
	n, f := node(t, in)
	q, _ := ParseQuery("10.96.0.5:80")
	client := &Client{Name: "/run/netns/a", Cookie: 42}
	r, err := Explain(n, q, client)
	if err != nil {
		t.Fatal(err)
	}
	if a := r.Frontends[0].ClientAffinity; a == nil || a.Present {
		t.Errorf("affinity %+v, want none yet", a)
	}
	live, _, _ := f.Frontend(maps.Frontend{Addr: netip.MustParseAddr("10.96.0.5"), Port: 80, Proto: maps.ProtoTCP})
	f.SetAffinity(42, live.RevNATID, live.Backends[0])
	r, err = Explain(n, q, client)
	if err != nil {
		t.Fatal(err)
	}
	if a := r.Frontends[0].ClientAffinity; a == nil || !a.Present || a.Backend != "10.1.0.1:8080" {
		t.Errorf("affinity %+v, want 10.1.0.1:8080", a)
	}
}

func TestExplainVerdicts(t *testing.T) {
	in := objects()
	n, _ := node(t, in)
	for q, want := range map[string]string{
		"10.96.0.5:81/tcp": "refused at once (ECONNREFUSED): a ClusterIP of default/web, which has no port 81/TCP",
		"10.96.0.6:80":     "not a Service frontend: socklb leaves it untouched",
		"127.0.0.1:30000":  "a node address with no NodePort here",
	} {
		qq, err := ParseQuery(q)
		if err != nil {
			t.Fatal(err)
		}
		r, err := Explain(n, qq, nil)
		if err != nil || !strings.Contains(r.Verdict, want) {
			t.Errorf("%s: %q, %v; want %q", q, r.Verdict, err, want)
		}
	}
	n.Input = func() (lb.Input, bool) { return lb.Input{}, false }
	if _, err := Explain(n, lb.Query{}, nil); !errors.Is(err, ErrNotSynced) {
		t.Errorf("before the sources synced: %v, want ErrNotSynced", err)
	}
}
