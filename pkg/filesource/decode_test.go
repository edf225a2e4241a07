package filesource

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/socklb/socklb/pkg/lb"
)

// svc returns a minimal Service document (5 lines).
func svc(name, ip string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: %s, namespace: ns}
spec:
  clusterIP: %s
`, name, ip)
}

// wantErr describes one expected *DocumentError.
type wantErr struct {
	index, line int
	is          error  // sentinel it wraps
	contains    string // substring of its message
}

// names lists the objects of in as "Kind ns/name", in order.
func names(in lb.Input) []string {
	var out []string
	for _, s := range in.Services {
		out = append(out, "Service "+s.Namespace+"/"+s.Name)
	}
	for _, s := range in.EndpointSlices {
		out = append(out, "EndpointSlice "+s.Namespace+"/"+s.Name)
	}
	return out
}

const validFile = `# socklb services
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  clusterIP: 10.96.0.10
  ports:
  - name: http
    port: 80
    targetPort: web
    protocol: TCP
  - name: dns
    port: 53
    targetPort: 5353
    protocol: UDP
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- name: http
  port: 8080
  protocol: TCP
- name: dns
  port: 5353
  protocol: UDP
endpoints:
- addresses: ["10.0.0.1"]
  conditions: {ready: true}
  nodeName: node-a
---
apiVersion: v1
kind: Service
metadata:
  name: api
spec:
  clusterIP: 10.96.0.11
  ports:
  - port: 443
`

func checkValid(t *testing.T, in lb.Input) {
	t.Helper()
	web := in.Services[0]
	if web.APIVersion != "v1" || web.Kind != "Service" {
		t.Errorf("web TypeMeta = %v", web.TypeMeta)
	}
	wantPorts := []corev1.ServicePort{
		{Name: "http", Port: 80, TargetPort: intstr.FromString("web"), Protocol: corev1.ProtocolTCP},
		{Name: "dns", Port: 53, TargetPort: intstr.FromInt32(5353), Protocol: corev1.ProtocolUDP},
	}
	if web.Spec.ClusterIP != "10.96.0.10" || !slices.Equal(web.Spec.Ports, wantPorts) {
		t.Errorf("web spec = %+v", web.Spec)
	}
	es := in.EndpointSlices[0]
	if es.AddressType != discoveryv1.AddressTypeIPv4 || es.Labels[discoveryv1.LabelServiceName] != "web" {
		t.Errorf("slice = %+v", es)
	}
	if len(es.Ports) != 2 || *es.Ports[0].Name != "http" || *es.Ports[0].Port != 8080 || *es.Ports[1].Protocol != corev1.ProtocolUDP {
		t.Errorf("slice ports = %+v", es.Ports)
	}
	if len(es.Endpoints) != 1 || es.Endpoints[0].Addresses[0] != "10.0.0.1" || !*es.Endpoints[0].Conditions.Ready ||
		*es.Endpoints[0].NodeName != "node-a" {
		t.Errorf("slice endpoints = %+v", es.Endpoints)
	}
	if in.Services[1].Spec.Ports[0].Port != 443 {
		t.Errorf("api ports = %+v", in.Services[1].Spec.Ports)
	}
}

func TestDecode(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  []string // names(in)
		errs  []wantErr
		check func(*testing.T, lb.Input)
	}{{
		name:  "valid multi-document file",
		input: validFile,
		want:  []string{"Service shop/web", "Service default/api", "EndpointSlice shop/web-abc"},
		check: checkValid,
	}, {
		name:  "CRLF line endings",
		input: strings.ReplaceAll(validFile, "\n", "\r\n"),
		want:  []string{"Service shop/web", "Service default/api", "EndpointSlice shop/web-abc"},
		check: checkValid,
	}, {
		name:  "empty input",
		input: "",
	}, {
		name:  "only comments and separators",
		input: "# nothing here\n---\n\n---\n# still nothing\n---\n",
	}, {
		name:  "leading separator",
		input: "---\n" + svc("a", "10.96.0.1") + "---\n" + svc("b", "10.96.0.2"),
		want:  []string{"Service ns/a", "Service ns/b"},
	}, {
		name:  "empty documents and comments between objects",
		input: "# header\n---\n" + svc("a", "10.96.0.1") + "---\n---\n# comment only\n---\n\n\n---\n" + svc("b", "10.96.0.2") + "--- # trailing comment\n",
		want:  []string{"Service ns/a", "Service ns/b"},
	}, {
		name:  "no final newline, trailing separator",
		input: svc("a", "10.96.0.1") + "---",
		want:  []string{"Service ns/a"},
	}, {
		name:  "UTF-8 byte order mark, document end marker",
		input: "\ufeff" + svc("a", "10.96.0.1") + "...\n---\n" + svc("b", "10.96.0.2"),
		want:  []string{"Service ns/a", "Service ns/b"},
	}, {
		name:  "JSON document",
		input: `{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "j"}}` + "\n---\n" + svc("b", "10.96.0.2"),
		want:  []string{"Service default/j", "Service ns/b"},
	}, {
		name: "malformed YAML in the middle",
		// doc 1: lines 1-5, separator line 6, doc 2: comment line 7, content lines 8-10, separator 11, doc 3 line 12.
		input: svc("a", "10.96.0.1") + "---\n# broken\napiVersion: v1\nkind: Service\nmetadata: {name: [\n---\n" + svc("c", "10.96.0.3"),
		want:  []string{"Service ns/a", "Service ns/c"},
		errs:  []wantErr{{index: 2, line: 8, is: ErrMalformed, contains: "yaml"}},
	}, {
		name:  "malformed YAML with CRLF",
		input: strings.ReplaceAll(svc("a", "10.96.0.1")+"---\n\n# broken\nkind: [\n---\n"+svc("c", "10.96.0.3"), "\n", "\r\n"),
		want:  []string{"Service ns/a", "Service ns/c"},
		errs:  []wantErr{{index: 2, line: 9, is: ErrMalformed}},
	}, {
		name:  "unknown kind",
		input: svc("a", "10.96.0.1") + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\ndata: {a: b}\n",
		want:  []string{"Service ns/a"},
		errs:  []wantErr{{index: 2, line: 7, is: ErrUnsupportedKind, contains: "apiVersion v1 kind ConfigMap"}},
	}, {
		name:  "unregistered version",
		input: "apiVersion: v2\nkind: Service\nmetadata: {name: a}\n",
		errs:  []wantErr{{index: 1, line: 1, is: ErrUnsupportedKind, contains: "apiVersion v2 kind Service"}},
	}, {
		name:  "custom resource",
		input: "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: a}\n",
		errs:  []wantErr{{index: 1, line: 1, is: ErrUnsupportedKind, contains: "example.com/v1 kind Widget"}},
	}, {
		name:  "old EndpointSlice version",
		input: "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: a}\naddressType: IPv4\n",
		errs:  []wantErr{{index: 1, line: 1, is: ErrUnsupportedKind, contains: "discovery.k8s.io/v1beta1"}},
	}, {
		name:  "bare list",
		input: "- a\n- b\n---\n" + svc("b", "10.96.0.2"),
		want:  []string{"Service ns/b"},
		errs:  []wantErr{{index: 1, line: 1, is: ErrMalformed, contains: "not an object but a list"}},
	}, {
		name:  "scalar",
		input: svc("a", "10.96.0.1") + "---\nhello\n",
		want:  []string{"Service ns/a"},
		errs:  []wantErr{{index: 2, line: 7, is: ErrMalformed, contains: "not an object but a string"}},
	}, {
		name:  "missing kind",
		input: "apiVersion: v1\nmetadata: {name: a}\n",
		errs:  []wantErr{{index: 1, line: 1, is: ErrMalformed, contains: "no kind"}},
	}, {
		name:  "missing apiVersion",
		input: "kind: Service\nmetadata: {name: a}\n",
		errs:  []wantErr{{index: 1, line: 1, is: ErrMalformed, contains: "no apiVersion"}},
	}, {
		name:  "empty object",
		input: "{}\n",
		errs:  []wantErr{{index: 1, line: 1, is: ErrMalformed, contains: "no kind"}},
	}, {
		name:  "missing name",
		input: "apiVersion: v1\nkind: Service\nmetadata: {namespace: x}\n",
		errs:  []wantErr{{index: 1, line: 1, is: ErrMalformed, contains: "no metadata.name"}},
	}, {
		name:  "field of the wrong type",
		input: "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: 80}\n",
		errs:  []wantErr{{index: 1, line: 1, is: ErrMalformed}},
	}, {
		name:  "invalid separator",
		input: svc("a", "10.96.0.1") + "--- what\n" + svc("b", "10.96.0.2") + "---\n" + svc("c", "10.96.0.3"),
		// The splitter drops the lines before a bad separator: document 1 is lost.
		want: []string{"Service ns/b", "Service ns/c"},
		errs: []wantErr{{index: 1, line: 1, is: ErrMalformed, contains: "line 6: invalid Yaml document separator"}},
	}, {
		name: "duplicates: later wins",
		input: svc("a", "10.96.0.1") + "---\n" + svc("a", "10.96.0.9") + "---\n" + svc("b", "10.96.0.2") +
			"---\napiVersion: v1\nkind: Service\nmetadata: {name: d}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: d, namespace: default}\n",
		want: []string{"Service ns/a", "Service ns/b", "Service default/d"},
		errs: []wantErr{
			{index: 2, line: 7, is: ErrDuplicate, contains: "Service ns/a replaces the one in document 1 (line 1)"},
			{index: 5, line: 23, is: ErrDuplicate, contains: "Service default/d"},
		},
		check: func(t *testing.T, in lb.Input) {
			if ip := in.Services[0].Spec.ClusterIP; ip != "10.96.0.9" {
				t.Errorf("duplicate: got clusterIP %s, want the later one", ip)
			}
		},
	}, {
		name: "same name, other kind or namespace: no duplicate",
		input: svc("a", "10.96.0.1") + "---\n" + strings.Replace(svc("a", "10.96.0.1"), "ns}", "other}", 1) +
			"---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a, namespace: ns}\naddressType: IPv4\n",
		want: []string{"Service ns/a", "Service other/a", "EndpointSlice ns/a"},
	}, {
		name: "v1 List",
		input: `apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: a}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: cm}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: a-1}
  addressType: IPv4
- kind: Service
- apiVersion: v1
  kind: Service
  metadata: {name: a}
- apiVersion: v1
  kind: List
  items: []
`,
		want: []string{"Service default/a", "EndpointSlice default/a-1"},
		errs: []wantErr{
			{index: 1, line: 1, is: ErrUnsupportedKind, contains: "item 2: unsupported kind: apiVersion v1 kind ConfigMap"},
			{index: 1, line: 1, is: ErrMalformed, contains: "item 4: malformed document: object has no apiVersion"},
			{index: 1, line: 1, is: ErrDuplicate, contains: "item 5: duplicate object"},
			{index: 1, line: 1, is: ErrUnsupportedKind, contains: "item 6: unsupported kind: apiVersion v1 kind List inside a list"},
		},
	}, {
		name: "typed lists",
		input: `apiVersion: v1
kind: ServiceList
items:
- metadata: {name: a}
- metadata: {name: b, namespace: x}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSliceList
items:
- metadata: {name: a-1}
  addressType: IPv6
`,
		want: []string{"Service default/a", "Service x/b", "EndpointSlice default/a-1"},
		check: func(t *testing.T, in lb.Input) {
			if k := in.Services[1].Kind; k != "Service" {
				t.Errorf("list item kind = %q", k)
			}
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in, errs := Decode(strings.NewReader(tt.input))
			if got := names(in); !slices.Equal(got, tt.want) {
				t.Errorf("objects = %q, want %q", got, tt.want)
			}
			if len(errs) != len(tt.errs) {
				t.Fatalf("got %d errors %v, want %d", len(errs), errs, len(tt.errs))
			}
			for i, err := range errs {
				want := tt.errs[i]
				var de *DocumentError
				if !errors.As(err, &de) {
					t.Fatalf("error %d is %T, want *DocumentError: %v", i, err, err)
				}
				if de.Index != want.index || de.Line != want.line {
					t.Errorf("error %d at document %d line %d, want document %d line %d: %v", i, de.Index, de.Line, want.index, want.line, err)
				}
				if !errors.Is(err, want.is) {
					t.Errorf("error %d does not wrap %v: %v", i, want.is, err)
				}
				if !strings.Contains(err.Error(), want.contains) {
					t.Errorf("error %d = %q, want it to contain %q", i, err, want.contains)
				}
				if prefix := fmt.Sprintf("document %d (line %d): ", want.index, want.line); !strings.HasPrefix(err.Error(), prefix) {
					t.Errorf("error %d = %q, want prefix %q", i, err, prefix)
				}
			}
			if tt.check != nil && !t.Failed() {
				tt.check(t, in)
			}
		})
	}
}

func TestDecodeReadError(t *testing.T) {
	in, errs := Decode(iotest.ErrReader(io.ErrUnexpectedEOF))
	if len(names(in)) != 0 || len(errs) != 1 || !errors.Is(errs[0], io.ErrUnexpectedEOF) {
		t.Fatalf("Decode(failing reader) = %v, %v", names(in), errs)
	}
	var de *DocumentError
	if errors.As(errs[0], &de) {
		t.Errorf("read error is a *DocumentError: %v", errs[0])
	}
}

func FuzzDecode(f *testing.F) {
	for _, seed := range []string{
		validFile,
		strings.ReplaceAll(validFile, "\n", "\r\n"),
		"",
		"---\n--- x\n---",
		"- a\n- b\n",
		"apiVersion: v1\nkind: List\nitems: [{kind: Service}, 3, null, {apiVersion: v1, kind: List}]\n",
		`{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "j"}}`,
		"a: &a [*a]\n",
		svc("a", "10.96.0.1") + "---\n" + svc("a", "10.96.0.1"),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, input string) {
		in, errs := Decode(strings.NewReader(input))
		lines := strings.Count(input, "\n") + 1
		for _, err := range errs {
			var de *DocumentError
			if !errors.As(err, &de) {
				t.Fatalf("error is %T, want *DocumentError: %v", err, err)
			}
			if de.Index < 1 || de.Line < 1 || de.Line > lines {
				t.Fatalf("error position out of range (input has %d lines): %v", lines, err)
			}
		}
		for _, s := range in.Services {
			if s == nil || s.Namespace == "" || s.Name == "" {
				t.Fatalf("service without namespace or name: %+v", s)
			}
		}
		for _, s := range in.EndpointSlices {
			if s == nil || s.Namespace == "" || s.Name == "" {
				t.Fatalf("slice without namespace or name: %+v", s)
			}
		}
	})
}
