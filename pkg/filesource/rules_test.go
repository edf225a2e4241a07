package filesource

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

func TestParseContent(t *testing.T) {
	cm := "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n"
	tests := []struct {
		name    string
		input   string
		want    []string // names(in) when accepted
		refused bool
		bad     []int    // documents named by the refusal
		skipped []string // "apiVersion kind=count" when accepted
		dups    []string
	}{
		{name: "valid", input: validFile, want: []string{"Service shop/web", "Service default/api", "EndpointSlice shop/web-abc"}},
		{name: "empty", input: "", refused: true},
		{name: "comments and separators", input: "# x\n---\n\n---\n", refused: true},
		{name: "empty List", input: emptyList, want: nil},
		{name: "two empty Lists", input: emptyList + "---\n# none\n---\n" + emptyList, want: nil},
		{name: "empty List and a ConfigMap", input: emptyList + "---\n" + cm, refused: true},
		{name: "empty ServiceList", input: "apiVersion: v1\nkind: ServiceList\nitems: []\n", refused: true},
		{name: "List of ConfigMaps", input: "apiVersion: v1\nkind: List\nitems: [{apiVersion: v1, kind: ConfigMap, metadata: {name: a}}]\n", refused: true},
		{name: "only ConfigMaps", input: cm + "---\n" + cm, refused: true},
		{
			name: "ConfigMaps and a custom resource skipped", input: svc("a", "10.96.0.1") + "---\n" + cm + "---\n" + cm +
				"---\napiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n",
			want: []string{"Service ns/a"}, skipped: []string{"example.com/v1 Widget=1", "v1 ConfigMap=2"},
		},
		{
			name: "one broken document refuses all", input: svc("a", "10.96.0.1") + "---\nkind: [\n---\n" + svc("c", "10.96.0.3"),
			refused: true, bad: []int{2},
		},
		{
			name: "each broken document is named", input: "kind: [\n---\n" + svc("b", "10.96.0.2") + "---\n{}\n---\nhello\n",
			refused: true, bad: []int{1, 3, 4},
		},
		{name: "no name", input: "apiVersion: v1\nkind: Service\nmetadata: {}\n", refused: true, bad: []int{1}},
		{name: "Service at another version", input: svc("a", "10.96.0.1") + "---\napiVersion: v2\nkind: Service\nmetadata: {name: b}\n", refused: true, bad: []int{2}},
		{name: "old EndpointSlice version", input: svc("a", "10.96.0.1") + "---\napiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: b}\n", refused: true, bad: []int{2}},
		{name: "List inside a List", input: "apiVersion: v1\nkind: List\nitems: [{apiVersion: v1, kind: List, items: []}]\n", refused: true, bad: []int{1}},
		{name: "broken item in a List", input: "apiVersion: v1\nkind: List\nitems: [{apiVersion: v1, kind: Service, metadata: {name: a}}, {kind: Service}]\n", refused: true, bad: []int{1}},
		{name: "invalid separator", input: svc("a", "10.96.0.1") + "--- x\n" + svc("b", "10.96.0.2"), refused: true, bad: []int{1}},
		{
			name: "duplicates: later wins", input: svc("a", "10.96.0.1") + "---\n" + svc("a", "10.96.0.9"),
			want: []string{"Service ns/a"}, dups: []string{"Service ns/a"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, ref := parseContent([]byte(tt.input))
			if (ref != nil) != tt.refused {
				t.Fatalf("refused = %v, want %v (%+v)", ref != nil, tt.refused, ref)
			}
			if ref != nil {
				var bad []int
				for _, de := range ref.bad {
					bad = append(bad, de.Index)
				}
				if !slices.Equal(bad, tt.bad) {
					t.Errorf("refusal names documents %v, want %v: %v", bad, tt.bad, ref.bad)
				}
				return
			}
			if got := names(c.in); !slices.Equal(got, tt.want) {
				t.Errorf("objects = %q, want %q", got, tt.want)
			}
			var skipped []string
			for _, k := range c.skipped {
				skipped = append(skipped, fmt.Sprintf("%s %s=%d", k.apiVersion, k.kind, k.count))
			}
			if !slices.Equal(skipped, tt.skipped) {
				t.Errorf("skipped = %q, want %q", skipped, tt.skipped)
			}
			if !slices.Equal(c.duplicates, tt.dups) {
				t.Errorf("duplicates = %q, want %q", c.duplicates, tt.dups)
			}
		})
	}
}

// TestDocumentErrorObject: a broken document is named as far as it can be
// read, and a YAML error's line is turned into a line of the file.
func TestDocumentErrorObject(t *testing.T) {
	tests := []struct {
		name, input string
		object      string
		errLine     int
	}{
		{"syntax error in spec", "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec: {ports: [\n", "Service shop/web", 6},
		{"syntax error in metadata", "kind: Service\nmetadata:\n  namespace: 'shop' # here\n  name: \"web\"\n  labels: {a: [\nspec: {}\n", "Service shop/web", 6},
		{"flow metadata, broken elsewhere", "kind: Service\nmetadata: {name: web, namespace: shop}  # c\nspec:\n  - a\n  b: [\n", "Service shop/web", 4},
		{"no namespace", "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: 80}\n", "Service default/web", 0},
		{"wrong type of metadata", "apiVersion: v1\nkind: Service\nmetadata: [a]\n", "Service (no name)", 0},
		{"broken JSON", `{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "j", "namespace": "x"}, "spec": [}`, "Service x/j", 0},
		{"nothing to read", "a: [\n", "", 1},
		{"after comments", "# one\n# two\napiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: [\n", "Service default/a", 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			input := svc("first", "10.96.0.1") + "---\n" + tt.input // the document starts on line 7
			_, errs := Decode(strings.NewReader(input))
			if len(errs) != 1 {
				t.Fatalf("got %d errors %v, want 1", len(errs), errs)
			}
			var de *DocumentError
			if !errors.As(errs[0], &de) {
				t.Fatalf("error is %T", errs[0])
			}
			wantLine := 0
			if tt.errLine > 0 {
				wantLine = 6 + tt.errLine
			}
			if de.Object != tt.object || de.ErrLine != wantLine {
				t.Errorf("object %q errLine %d, want %q %d: %v", de.Object, de.ErrLine, tt.object, wantLine, de)
			}
		})
	}
}

func FuzzParseContent(f *testing.F) {
	for _, seed := range []string{
		validFile, "", emptyList, "metadata: {name: [\nkind: Service\n", "kind: 'a\nmetadata:\n\tname: x\n",
		`{"kind": "Service", "metadata": {"name": "a"`, "metadata:\n  name: a\n  namespace:\n", "--- x\n",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, input string) {
		identify([]byte(input)) // never panics, whatever it finds
		c, ref := parseContent([]byte(input))
		// YAML breaks lines at \n, \r\n and a lone \r alike.
		lines := strings.Count(strings.ReplaceAll(strings.ReplaceAll(input, "\r\n", "\n"), "\r", "\n"), "\n") + 1
		if ref == nil {
			for _, s := range c.in.Services {
				if s == nil || s.Name == "" || s.Namespace == "" {
					t.Fatalf("accepted a service without namespace or name: %+v", s)
				}
			}
			return
		}
		for _, de := range ref.bad {
			if de.Index < 1 || de.Line < 1 || de.Line > lines || de.ErrLine < 0 || de.ErrLine > lines+1 {
				t.Fatalf("refusal position out of range (input has %d lines): %+v", lines, de)
			}
		}
	})
}
