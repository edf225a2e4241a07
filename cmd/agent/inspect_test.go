package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http/httptest"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/socklb/socklb/pkg/bypass"
	"github.com/socklb/socklb/pkg/ejection"
	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/loader"
	"github.com/socklb/socklb/pkg/maps"
	"github.com/socklb/socklb/pkg/reconciler"
)

var updateInspectSchema = flag.Bool("update", false, "rewrite testdata/TestFinding9InspectJSONSchema.golden")

// inspectSchemaGolden is the checked-in schema of `inspect --json`: one
// line per JSON field path, with the JSON types seen there.
const inspectSchemaGolden = "testdata/TestFinding9InspectJSONSchema.golden"

// TestFinding9InspectJSONSchema pins the shape of `inspect --json`, which
// scripts and dashboards read: the field paths of inspectOutput and their
// JSON types, as marshalled from real output (frontends from a fake's
// maps through collectInspect, the agent's /status through
// statusHandler and fetchStatus), compared with a checked-in schema. A
// renamed, removed, added or retyped field fails until the golden file
// is rewritten with -update, and the README must name every field.
func TestFinding9InspectJSONSchema(t *testing.T) {
	samples := inspectSamples(t)
	got := inspectSchema(t, samples...)

	t.Run("every field is in the samples", func(t *testing.T) {
		// A field the samples leave out (omitempty and zero, say) would
		// be missing from the schema without anyone noticing.
		want := typePaths(reflect.TypeFor[inspectOutput](), "")
		var seen []string
		for p, types := range got {
			if !slices.Equal(types, []string{"absent"}) {
				seen = append(seen, p)
			}
		}
		slices.Sort(seen)
		if !slices.Equal(seen, want) {
			t.Errorf("the samples show fields %v;\nthe Go types have %v;\nadd what is missing to inspectSamples", seen, want)
		}
	})

	t.Run("schema", func(t *testing.T) {
		text := formatSchema(got)
		if *updateInspectSchema {
			if err := os.WriteFile(inspectSchemaGolden, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(inspectSchemaGolden)
		if err != nil {
			t.Fatalf("%v (run with -update to create it)", err)
		}
		if text != string(want) {
			t.Errorf("inspect --json changed shape (a field renamed, removed, added or retyped); "+
				"if that is meant, update the README and run with -update.\n%s", diffLines(string(want), text))
		}
	})

	t.Run("every field is documented", func(t *testing.T) {
		readme, err := os.ReadFile("../../README.md")
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range []string{readmeInspectHeading, readmeStatusHeading} {
			if readmeSection(string(readme), h) == "" {
				t.Fatalf("the README has no %q section", h)
			}
		}
		if missing := undocumentedFields(string(readme), got); len(missing) > 0 {
			t.Errorf("the README does not describe these fields of inspect --json (in %q, or for agent.* in %q): %s",
				readmeInspectHeading, readmeStatusHeading, strings.Join(missing, ", "))
		}
	})
}

// inspectSamples are two outputs of inspect --json that together fill
// every field: one with the agent's status, one where it could not be
// read.
func inspectSamples(t *testing.T) [][]byte {
	t.Helper()
	f := maps.NewFake()
	tcp := func(addr string, port uint16) maps.Frontend {
		return maps.Frontend{Addr: netip.MustParseAddr(addr), Port: port, Proto: maps.ProtoTCP}
	}
	for id, addr := range map[maps.BackendID]string{1: "198.18.0.1", 2: "198.18.0.2"} {
		if err := f.UpsertBackend(id, maps.Backend{Addr: netip.MustParseAddr(addr), Port: 8080, Proto: maps.ProtoTCP}); err != nil {
			t.Fatal(err)
		}
	}
	web, empty, np := tcp("198.19.0.10", 80), tcp("198.19.0.20", 80), tcp("10.0.0.5", 30080)
	for _, s := range []maps.Service{
		{Frontend: web, RevNATID: 1, Flags: maps.FlagAffinity | maps.FlagLocal | maps.FlagLeastConn | maps.FlagOutlier, AffinityTimeout: 10800,
			Name: "test/web:http", Backends: []maps.BackendID{1, 2}},
		{Frontend: empty, RevNATID: 2, Name: "test/empty:http"},
		{Frontend: np, RevNATID: 3, Flags: maps.FlagNodePort, Name: "test/web:http", Backends: []maps.BackendID{2}},
	} {
		if err := f.PublishService(s); err != nil {
			t.Fatal(err)
		}
	}
	// Counters, as the program counts them.
	if _, _, err := f.Lookup(web, 0); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.Lookup(empty, 0); !errors.Is(err, maps.ErrNoBackend) {
		t.Fatalf("lookup of an empty frontend: %v, want ErrNoBackend", err)
	}
	rows, err := collectInspect(f, f)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	ejectedBackend := maps.Backend{Addr: netip.MustParseAddr("198.18.0.3"), Port: 8080, Proto: maps.ProtoTCP}
	if err := f.PutEjection(ejectedBackend, maps.Ejection{Ejections: 2, At: now, Until: now.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	ejections, err := collectEjections(f, now)
	if err != nil || len(ejections) != 1 || !ejections[0].Ejected {
		t.Fatalf("collectEjections: %+v, %v; want the one ejected backend", ejections, err)
	}
	if len(rows) != 3 {
		t.Fatalf("collectInspect: %d rows, want 3: %+v", len(rows), rows)
	}
	features := []loader.Feature{
		{Name: loader.FeatSockAddr, Available: true, MinKernel: "4.17"},
		{Name: loader.FeatSockDestroy, Available: false, MinKernel: "6.5", Detail: "kfunc not found",
			Needed: []string{"iter/tcp", "iter/udp"}},
	}

	// The agent's side: /status of an agent that is not ready, read the
	// way inspect reads it.
	st := &agentStatus{
		synced:   func() bool { return true },
		inSync:   func() bool { return false },
		attached: func() bool { return true },
		over: func() []reconciler.OverCapacity {
			return []reconciler.OverCapacity{{Service: "test/big", Name: "test/big:http",
				Frontend: tcp("198.19.0.30", 80), Backends: 70000, Stale: true}}
		},
		ejected: func() []ejection.Ejected {
			return []ejection.Ejected{{Backend: lb.Backend{Addr: ejectedBackend.Addr, Port: ejectedBackend.Port},
				Until: now.Add(time.Minute), Ejections: 2, Services: []types.NamespacedName{{Namespace: "test", Name: "web"}}}}
		},
		bypassed: func() []bypass.Entry {
			return []bypass.Entry{{Pod: "mesh/client", UID: "0d1e2f30-4a5b-4c6d-8e9f-a0b1c2d3e4f5", Cookie: 4253,
				Why: "its namespace's labels match --bypass-namespace-selector istio-injection=enabled"}}
		},
	}
	st.setDatapathDrift("link connect4 missing")
	srv := httptest.NewServer(statusHandler(st, nil))
	defer srv.Close()
	ctx := context.Background()
	report, err := fetchStatus(ctx, strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	_, unreachable := fetchStatus(ctx, "")
	if unreachable == nil {
		t.Fatal("fetchStatus without a health address succeeded")
	}

	var out [][]byte
	for _, o := range []inspectOutput{
		{Frontends: rows, Features: features, Agent: report, Ejections: ejections},
		{Frontends: rows, Features: features, AgentError: unreachable.Error(), Ejections: ejections},
	} {
		// As inspect --json writes it.
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetIndent("", "  ")
		if err := enc.Encode(o); err != nil {
			t.Fatal(err)
		}
		out = append(out, b.Bytes())
	}
	return out
}

// inspectSchema maps each field path of the JSON documents ("frontends[].id")
// to the sorted JSON types found there; "absent" means an object at the
// parent path lacked the field.
func inspectSchema(t *testing.T, docs ...[]byte) map[string][]string {
	t.Helper()
	types := map[string]map[string]bool{}
	note := func(path, typ string) {
		if types[path] == nil {
			types[path] = map[string]bool{}
		}
		types[path][typ] = true
	}
	// Keys of every object seen at each path, to find absent fields.
	objects := map[string][]map[string]any{}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			if path != "" {
				note(path, "object")
			}
			objects[path] = append(objects[path], v)
			for k, child := range v {
				walk(join(path, k), child)
			}
		case []any:
			note(path, "array")
			for _, e := range v {
				walk(path+"[]", e)
			}
		case string:
			note(path, "string")
		case json.Number:
			note(path, "number")
		case bool:
			note(path, "boolean")
		case nil:
			note(path, "null")
		default:
			t.Fatalf("%s: unexpected %T", path, v)
		}
	}
	for _, doc := range docs {
		dec := json.NewDecoder(bytes.NewReader(doc))
		dec.UseNumber()
		var v any
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("%v\n%s", err, doc)
		}
		if _, ok := v.(map[string]any); !ok {
			t.Fatalf("inspect --json is not an object:\n%s", doc)
		}
		walk("", v)
	}
	for parent, objs := range objects {
		for p := range types {
			key, ok := childKey(parent, p)
			if !ok {
				continue
			}
			for _, o := range objs {
				if _, ok := o[key]; !ok {
					note(p, "absent")
				}
			}
		}
	}
	out := map[string][]string{}
	for p, set := range types {
		for typ := range set {
			out[p] = append(out[p], typ)
		}
		slices.Sort(out[p])
	}
	return out
}

func join(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

// childKey returns the key of p when p is a field directly inside the
// object at path parent.
func childKey(parent, p string) (string, bool) {
	prefix := ""
	if parent != "" {
		prefix = parent + "."
	}
	key, ok := strings.CutPrefix(p, prefix)
	return key, ok && key != "" && !strings.ContainsAny(key, ".[")
}

// typePaths lists the JSON paths below prefix that the Go type t
// marshals to, from its json tags: fields, and "[]" for the elements of
// an array.
func typePaths(t reflect.Type, prefix string) []string {
	var out []string
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Slice, reflect.Array:
		return append([]string{prefix + "[]"}, typePaths(t.Elem(), prefix+"[]")...)
	case reflect.Struct:
	default:
		return nil
	}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		p := join(prefix, name)
		out = append(out, p)
		out = append(out, typePaths(f.Type, p)...)
	}
	slices.Sort(out)
	return out
}

func formatSchema(s map[string][]string) string {
	paths := make([]string, 0, len(s))
	for p := range s {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	var b strings.Builder
	b.WriteString("# The JSON of `socklb-agent inspect --json`: field path, then the JSON\n" +
		"# types seen there (absent: the field may be left out). Generated by\n" +
		"# TestFinding9InspectJSONSchema; rewrite with `go test ./cmd/agent -run Finding9 -update`.\n")
	for _, p := range paths {
		fmt.Fprintf(&b, "%-40s %s\n", p, strings.Join(s[p], "|"))
	}
	return b.String()
}

// diffLines lists the lines only in want (-) and only in got (+).
func diffLines(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for _, l := range w {
		if !slices.Contains(g, l) {
			fmt.Fprintf(&b, "- %s\n", l)
		}
	}
	for _, l := range g {
		if !slices.Contains(w, l) {
			fmt.Fprintf(&b, "+ %s\n", l)
		}
	}
	return b.String()
}

// The README documents inspect --json in its inspect section, and the
// agent's /status (the "agent" field) in its metrics section.
const (
	readmeInspectHeading = "## Inspecting"
	readmeStatusHeading  = "## Metrics and health"
)

// undocumentedFields returns the field paths of schema (not the "[]" of
// array elements) whose name the README does not give, in backticks or
// as a JSON key: fields of agent where it documents /status, the others
// in its inspect section. A name is looked for, not its whole path, as
// the README describes nested fields in prose ("backends (id,
// address)").
func undocumentedFields(readme string, schema map[string][]string) []string {
	inspect, status := readmeSection(readme, readmeInspectHeading), readmeSection(readme, readmeStatusHeading)
	var missing []string
	for p := range schema {
		if strings.HasSuffix(p, "[]") {
			continue
		}
		doc := inspect
		if strings.HasPrefix(p, "agent.") {
			doc = status
		}
		name := strings.TrimSuffix(p[strings.LastIndex(p, ".")+1:], "[]")
		if !strings.Contains(doc, "`"+name+"`") && !strings.Contains(doc, `"`+name+`"`) {
			missing = append(missing, p)
		}
	}
	slices.Sort(missing)
	return missing
}

// readmeSection is the text under heading up to the next heading of its
// level, "" when the README has no such heading.
func readmeSection(readme, heading string) string {
	_, section, ok := strings.Cut(readme, "\n"+heading+"\n")
	if !ok {
		return ""
	}
	if i := strings.Index(section, "\n## "); i >= 0 {
		section = section[:i]
	}
	return section
}
