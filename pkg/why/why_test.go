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

// A port (or protocol) a ClusterIP does not have: the verdict follows
// the kernel's cluster IP map, and says loudly when that is not what the
// plan wants.
func TestExplainUnknownPorts(t *testing.T) {
	in := objects()
	n, f := node(t, in)
	vip := netip.MustParseAddr("10.96.0.5")
	ask := func(q string) Report {
		t.Helper()
		return ask(t, n, q)
	}
	// Without a protocol: TCP balanced, UDP refused (no such port).
	r := ask("10.96.0.5:80")
	if !strings.Contains(r.Verdict, "balanced over 1 backend") ||
		!strings.Contains(r.Verdict, "80/UDP: refused at once (ECONNREFUSED): the Service has no port 80/UDP") {
		t.Errorf("verdict %q; want TCP balanced and UDP refused", r.Verdict)
	}
	if r := ask("10.96.0.5:80/tcp"); strings.Contains(r.Verdict, "UDP") {
		t.Errorf("verdict for /tcp %q mentions UDP", r.Verdict)
	}
	if u := r.UnknownPorts; u == nil || !u.Refused || u.OverCapacity || u.Differs != "" {
		t.Errorf("unknown ports %+v; want refused, as planned", u)
	}

	// A frontend of the address over capacity: the plan leaves the
	// address out of the cluster IP map, and unknown ports untouched.
	if err := f.DeleteVIP(vip); err != nil {
		t.Fatal(err)
	}
	n.Facts = func() lb.Facts {
		return lb.Facts{OverCapacity: map[lb.Frontend]bool{{Addr: vip, Port: 80, Proto: lb.TCP}: false}}
	}
	r = ask("10.96.0.5:81/tcp")
	if !strings.HasPrefix(r.Verdict, "left untranslated: a ClusterIP of default/web, which has no port 81/TCP; a frontend of the address is over map capacity") ||
		r.UnknownPorts.Differs != "" {
		t.Errorf("over capacity: verdict %q, %+v", r.Verdict, r.UnknownPorts)
	}
	// The kernel lacks the address the plan wants there: said loudly.
	n.Facts = func() lb.Facts { return lb.Facts{} }
	r = ask("10.96.0.5:81")
	var buf bytes.Buffer
	if err := Render(&buf, r, n.Now()); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(r.Verdict, "left untranslated for now") || !strings.Contains(buf.String(), "KERNEL DIFFERS FROM THE PLAN: the kernel does not hold the address") {
		t.Errorf("missing address: verdict %q, rendered:\n%s", r.Verdict, buf.String())
	}
	// Not a ClusterIP: nothing about unknown ports.
	if r := ask("10.96.0.6:80"); r.UnknownPorts != nil {
		t.Errorf("an unknown address has unknown ports %+v", r.UnknownPorts)
	}
}

// svcAt is a Service without endpoints: a ClusterIP (clusterIP set) or
// one with external IPs, created at the second given (older wins a
// frontend both claim).
func svcAt(name, clusterIP string, externalIPs []string, created int64, ports ...corev1.ServicePort) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, CreationTimestamp: metav1.Unix(created, 0)},
		Spec:       corev1.ServiceSpec{ClusterIP: clusterIP, ExternalIPs: externalIPs, Ports: ports},
	}
	if clusterIP != "" {
		s.Spec.ClusterIPs = []string{clusterIP}
	}
	return s
}

func tcp(port int32) corev1.ServicePort {
	return corev1.ServicePort{Name: "p" + string(rune('a'+port%26)), Protocol: corev1.ProtocolTCP, Port: port}
}

// What the kernel does at addresses shared with external IPs, with a
// protocol socklb does not balance, and after the plan dropped a Service
// the kernel still holds: the verdict follows the kernel, and a
// difference with the plan is said only where there is one.
func TestExplainAgainstTheKernel(t *testing.T) {
	vip := netip.MustParseAddr("10.96.0.5")
	t.Run("an external IP over capacity at a ClusterIP's address", func(t *testing.T) {
		in := objects()
		in.Services = append(in.Services, svcAt("ext", "10.96.0.9", []string{"10.96.0.5"}, 100, tcp(443)))
		n, f := node(t, in)
		if err := f.DeleteService(maps.Frontend{Addr: vip, Port: 443, Proto: maps.ProtoTCP}); err != nil {
			t.Fatal(err)
		}
		n.Facts = func() lb.Facts {
			return lb.Facts{OverCapacity: map[lb.Frontend]bool{{Addr: vip, Port: 443, Proto: lb.TCP}: false}}
		}
		if r := ask(t, n, "10.96.0.5:81/tcp"); !strings.HasPrefix(r.Verdict, "refused at once") || r.UnknownPorts.Differs != "" {
			t.Errorf("an unknown port: %q, %+v; want refused, as planned (the blocked frontend is not a ClusterIP one)", r.Verdict, r.UnknownPorts)
		}
		if r := ask(t, n, "10.96.0.5:443/tcp"); !strings.Contains(r.Verdict, "not programmed, and the kernel holds the address as a ClusterIP: refused at once") {
			t.Errorf("the external IP's port over capacity: %q; want refused (the kernel refuses it as an unknown port)", r.Verdict)
		}
	})
	t.Run("an older Service's external IP takes a ClusterIP's only port", func(t *testing.T) {
		in := lb.Input{Services: []*corev1.Service{
			svcAt("old", "10.96.0.9", []string{"10.96.0.7"}, 100, tcp(80)),
			svcAt("new", "10.96.0.7", nil, 200, tcp(80)),
		}}
		n, _ := node(t, in)
		r := ask(t, n, "10.96.0.7:81/tcp")
		if r.UnknownPorts != nil || !strings.Contains(r.Verdict, "leaves it untouched") {
			t.Errorf("%q, %+v; want untouched, no difference (the plan keeps the address out of the cluster IP map)", r.Verdict, r.UnknownPorts)
		}
		if r := ask(t, n, "10.96.0.7:80"); strings.Contains(r.Verdict, "UDP") {
			t.Errorf("%q: says something of UDP at an address the kernel does not refuse", r.Verdict)
		}
	})
	t.Run("an external frontend at a ClusterIP's address, both protocols asked", func(t *testing.T) {
		in := lb.Input{Services: []*corev1.Service{
			svcAt("old", "10.96.0.9", []string{"10.96.0.7"}, 100, tcp(80)),
			svcAt("new", "10.96.0.7", nil, 200, tcp(80), tcp(90)),
		}}
		n, _ := node(t, in)
		if r := ask(t, n, "10.96.0.7:80"); !strings.Contains(r.Verdict, "80/UDP: refused at once") {
			t.Errorf("%q; want UDP refused (the address is a published ClusterIP)", r.Verdict)
		}
	})
	t.Run("SCTP", func(t *testing.T) {
		in := lb.Input{Services: []*corev1.Service{svcAt("mixed", "10.96.0.7", nil, 100, tcp(80),
			corev1.ServicePort{Name: "s", Protocol: corev1.ProtocolSCTP, Port: 9000})}}
		n, _ := node(t, in)
		r := ask(t, n, "10.96.0.7:9000")
		if !strings.Contains(r.Verdict, "default/mixed port 9000/SCTP: a protocol socklb does not balance, left untouched") ||
			!strings.Contains(r.Verdict, "refused at once (ECONNREFUSED): a ClusterIP of default/mixed, which has no port 9000/TCP or /UDP") {
			t.Errorf("%q; want SCTP untouched, TCP and UDP refused", r.Verdict)
		}
		in = lb.Input{Services: []*corev1.Service{svcAt("sctp", "10.96.0.8", nil, 100,
			corev1.ServicePort{Name: "s", Protocol: corev1.ProtocolSCTP, Port: 9000})}}
		n, _ = node(t, in)
		if r := ask(t, n, "10.96.0.8:9000"); r.Verdict != "default/sctp port 9000/SCTP: a protocol socklb does not balance, left untouched" {
			t.Errorf("an SCTP-only Service: %q", r.Verdict)
		}
	})
	t.Run("a Service the plan dropped and the kernel still holds", func(t *testing.T) {
		n, _ := node(t, objects())
		n.Input = func() (lb.Input, bool) { return lb.Input{}, true }
		r := ask(t, n, "10.96.0.5:80")
		if len(r.KernelOnly) != 1 || !strings.HasPrefix(r.Verdict, "the kernel still balances 10.96.0.5:80/TCP") ||
			r.UnknownPorts == nil || !strings.Contains(r.UnknownPorts.Differs, "the plan has no ClusterIP frontend there") {
			t.Errorf("%q, kernel only %v, unknown ports %+v; want the stale frontend and the stale cluster IP said", r.Verdict, r.KernelOnly, r.UnknownPorts)
		}
		var buf bytes.Buffer
		if err := Render(&buf, r, n.Now()); err != nil {
			t.Fatal(err)
		}
		if strings.Count(buf.String(), "KERNEL DIFFERS FROM THE PLAN") != 2 {
			t.Errorf("rendered:\n%s\nwant two loud lines", buf.String())
		}
	})
}

// ask explains q on n, for no client.
func ask(t *testing.T, n Node, q string) Report {
	t.Helper()
	qq, err := ParseQuery(q)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Explain(n, qq, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
