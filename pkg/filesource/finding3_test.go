package filesource

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
)

// Regression tests for issue 10, finding 3 (the file source applied empty,
// half-written and partly broken files) and finding 8 (one warning per
// skipped document).

const emptyList = "apiVersion: v1\nkind: List\nitems: []\n"

// startWith writes content to a new services file and runs a Source on it
// until it has loaded the services want.
func startWith(t *testing.T, content string, want ...string) *harness {
	t.Helper()
	path := filepath.Join(t.TempDir(), "services.yaml")
	write(t, path, content)
	h := start(t, path)
	eventually(t, "first sync", h.src.HasSynced)
	h.waitServices(want...)
	// The hook runs after the load has published: from then on the source
	// is idle until the file changes, so loads counts the next look.
	eventually(t, "the first load to end", func() bool { return h.loads.Load() >= 1 })
	return h
}

// change calls update and waits until the source has looked at the file
// since (the source must be idle before, as after startWith).
func (h *harness) change(update func()) {
	h.t.Helper()
	before := h.loads.Load()
	update()
	eventually(h.t, "a look at the changed file", func() bool { return h.loads.Load() > before })
}

// checkStill checks that the source still offers want and called no OnChange
// since changes.
func (h *harness) checkStill(changes int32, want ...string) {
	h.t.Helper()
	if got := h.services(); !slices.Equal(got, want) {
		h.t.Errorf("services = %q, want the last good %q", got, want)
	}
	if got := h.changes.Load(); got != changes {
		h.t.Errorf("OnChange called %d times, want none", got-changes)
	}
}

func TestFinding3EmptyFileKeepsLastGood(t *testing.T) {
	for _, tt := range []struct{ name, content string }{
		{"zero bytes", ""},
		{"whitespace", "\n  \n\t\n"},
		{"comments and separators", "# generated\n---\n---\n# nothing\n...\n"},
		{"only unsupported kinds", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n"},
		{"empty List beside an unsupported kind", emptyList + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n"},
		{"empty typed list", "apiVersion: v1\nkind: ServiceList\nitems: []\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := startWith(t, svc("a", "10.96.0.1"), "a")
			changes := h.changes.Load()
			h.change(func() { write(t, h.path, tt.content) })
			h.checkStill(changes, "a")
			eventually(t, "the refusal", func() bool { return h.logs.count(slog.LevelError, "file has no objects") > 0 })
			h.checkStill(changes, "a")
			// The same content again (new inode, same bytes): no second log.
			still := func() int { return h.logs.count(slog.LevelDebug, "still refused") }
			before := still()
			replace(t, h.path, tt.content)
			eventually(t, "the source to read the same content", func() bool { return still() > before })
			h.checkStill(changes, "a")
			if n := h.logs.count(slog.LevelError, "file has no objects"); n != 1 {
				t.Errorf("refusal logged %d times, want once per content", n)
			}
			if n := h.logs.count(slog.LevelError, "items: []"); n != 1 {
				t.Errorf("the refusal does not say how to remove every Service")
			}

			// The explicit way to remove everything is applied.
			write(t, h.path, emptyList)
			h.waitServices()
			eventually(t, "OnChange", func() bool { return h.changes.Load() == changes+1 })
			if !h.src.HasSynced() {
				t.Error("HasSynced false after an empty List")
			}
		})
	}
}

// TestFinding3FirstLoadEmptyNotSynced: a file that is empty on the first read
// is not a sync, so the agent does not program (or wipe) anything from it.
func TestFinding3FirstLoadEmptyNotSynced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "services.yaml")
	write(t, path, "")
	h := start(t, path)
	eventually(t, "the first load", func() bool { return h.loads.Load() >= 1 })
	if h.src.HasSynced() || h.changes.Load() != 0 {
		t.Fatalf("synced %v after %d changes on an empty file", h.src.HasSynced(), h.changes.Load())
	}
	h.waitLoads(5) // unsynced: it polls
	if h.src.HasSynced() || h.changes.Load() != 0 {
		t.Fatalf("synced %v after %d changes on an empty file", h.src.HasSynced(), h.changes.Load())
	}
	if n := h.logs.count(slog.LevelError, "file has no objects; nothing applied yet"); n != 1 {
		t.Errorf("refusal logged %d times over several polls, want once", n)
	}
	write(t, path, emptyList)
	eventually(t, "sync on an empty List", h.src.HasSynced)
	if len(h.src.Input().Services) != 0 || h.changes.Load() != 1 {
		t.Errorf("after an empty List: %d services, %d changes", len(h.src.Input().Services), h.changes.Load())
	}
}

// TestFinding3HalfWrittenFileNotRead is `cmd > services.yaml` with a pause
// in the middle: the half written is a valid file by itself (one whole
// Service), so only not reading it at all keeps the old content.
func TestFinding3HalfWrittenFileNotRead(t *testing.T) {
	h := startWith(t, svc("a", "10.96.0.1"), "a")
	changes := h.changes.Load()
	busy := func() int { return h.logs.count(slog.LevelDebug, "file is open for writing") }

	var f *os.File
	seen := busy()
	h.change(func() {
		var err error
		f, err = os.OpenFile(h.path, os.O_WRONLY|os.O_TRUNC, 0) // as the shell's `>` does
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(svc("b", "10.96.0.2") + "---\n"); err != nil {
			t.Fatal(err)
		}
	})
	defer f.Close()
	h.checkStill(changes, "a")
	// Proof that the source kept looking while the half was there: at
	// least two more looks found the file open for writing.
	eventually(t, "the source to find the file open for writing", func() bool { return busy() >= seen+2 })
	h.checkStill(changes, "a")

	if _, err := f.WriteString(svc("c", "10.96.0.3")); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	h.waitServices("b", "c")
	eventually(t, "OnChange", func() bool { return h.changes.Load() == changes+1 })
}

// TestFinding3NoLeaseFallsBack: where leases do not work the file is read
// once it stayed the same for the debounce interval, and that is logged once.
func TestFinding3NoLeaseFallsBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "services.yaml")
	write(t, path, svc("a", "10.96.0.1"))
	var calls atomic.Int32
	h := startHooked(t, path, func(s *Source) {
		s.lease = func(*os.File) (func() error, error) {
			calls.Add(1)
			return nil, fmt.Errorf("%w: %w", errNoLease, os.ErrPermission)
		}
	})
	h.waitServices("a")
	write(t, path, svc("b", "10.96.0.2"))
	h.waitServices("b")
	if n := h.logs.count(slog.LevelInfo, "file leases do not work here"); n != 1 || calls.Load() != 1 {
		t.Errorf("fallback logged %d times after %d lease attempts, want once after one", n, calls.Load())
	}
	if n := h.logs.count(slog.LevelDebug, "checking that it stays unchanged"); n < 2 {
		t.Errorf("stability check ran %d times, want one per change", n)
	}
}

func TestFinding3SyntaxErrorKeepsWholeFile(t *testing.T) {
	good := svc("a", "10.96.0.1") + "---\n" + svc("b", "10.96.0.2") + "---\n" + svc("c", "10.96.0.3")
	// Document 2 starts on line 7 (5 lines of a, the separator on line 6).
	for _, tt := range []struct {
		name, doc2 string
		line       int    // the line the log must name
		object     string // and the object
	}{{
		name:   "YAML syntax error",
		doc2:   "apiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: ns}\nspec:\n  clusterIP: [10.96.0.2\n",
		line:   11, // the clusterIP line
		object: "Service ns/b",
	}, {
		name:   "syntax error inside metadata",
		doc2:   "apiVersion: v1\nkind: Service\nmetadata:\n  name: b\n  namespace: ns\n  labels: {a: [\nspec: {}\n",
		line:   13,
		object: "Service ns/b",
	}, {
		name:   "field of the wrong type",
		doc2:   "apiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: ns}\nspec:\n  ports: 80\n",
		line:   7,
		object: "Service ns/b",
	}, {
		name:   "no name",
		doc2:   "apiVersion: v1\nkind: Service\nmetadata: {namespace: ns}\n",
		line:   7,
		object: "Service (no name)",
	}, {
		name:   "Service at an unknown apiVersion",
		doc2:   "apiVersion: v2\nkind: Service\nmetadata: {name: b, namespace: ns}\n",
		line:   7,
		object: "Service ns/b",
	}} {
		t.Run(tt.name, func(t *testing.T) {
			h := startWith(t, good, "a", "b", "c")
			changes := h.changes.Load()
			h.change(func() { write(t, h.path, svc("a", "10.96.0.1")+"---\n"+tt.doc2+"---\n"+svc("c", "10.96.0.3")) })
			h.checkStill(changes, "a", "b", "c")
			eventually(t, "the refusal", func() bool { return h.logs.count(slog.LevelError, "file refused") > 0 })
			h.checkStill(changes, "a", "b", "c")
			recs := h.logs.find(slog.LevelError, "file refused")
			if len(recs) != 1 {
				t.Fatalf("%d refusal records, want 1: %v", len(recs), recs)
			}
			got := recs[0]
			if got["document"] != "2" || got["line"] != fmt.Sprint(tt.line) || got["object"] != tt.object || got["err"] == "" {
				t.Errorf("refusal names document %s line %s object %q (err %q), want document 2 line %d object %q",
					got["document"], got["line"], got["object"], got["err"], tt.line, tt.object)
			}
			// Fixing the file applies it.
			write(t, h.path, svc("a", "10.96.0.1")+"---\n"+svc("c", "10.96.0.3"))
			h.waitServices("a", "c")
		})
	}
}

func TestFinding8UnknownKindWarnsOnce(t *testing.T) {
	var b strings.Builder
	b.WriteString(svc("a", "10.96.0.1"))
	for i := range 500 {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm-%d, namespace: ns}\ndata: {k: v}\n", i)
	}
	b.WriteString("---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Secret, metadata: {name: s1}}\n- {apiVersion: v1, kind: Secret, metadata: {name: s2}}\n")
	h := startWith(t, b.String(), "a")

	recs := h.logs.find(slog.LevelWarn, "skipping objects of unsupported kinds")
	counts := map[string]string{}
	for _, r := range recs {
		counts[r["apiVersion"]+" "+r["kind"]] = r["count"]
	}
	want := map[string]string{"v1 ConfigMap": "500", "v1 Secret": "2"}
	if len(recs) != 2 || fmt.Sprint(counts) != fmt.Sprint(want) {
		t.Errorf("unsupported kinds logged as %v (%d lines), want one line per kind %v", counts, len(recs), want)
	}
	if n := h.logs.count(slog.LevelWarn, ""); n != 2 {
		t.Errorf("%d warnings, want only the 2 per kind", n)
	}
}

func TestDuplicatesLoggedOnce(t *testing.T) {
	var b strings.Builder
	for range 2 {
		for i := range 12 {
			b.WriteString(svc(fmt.Sprintf("s%02d", i), "10.96.0.1") + "---\n")
		}
	}
	h := startWith(t, b.String(), "s00", "s01", "s02", "s03", "s04", "s05", "s06", "s07", "s08", "s09", "s10", "s11")
	recs := h.logs.find(slog.LevelWarn, "defined more than once")
	if len(recs) != 1 || recs[0]["count"] != "12" ||
		!strings.Contains(recs[0]["objects"], "Service ns/s09") || strings.Contains(recs[0]["objects"], "Service ns/s10") ||
		!strings.Contains(recs[0]["objects"], "and 2 more") {
		t.Errorf("duplicates logged as %v, want one line with the count and the first 10 names", recs)
	}
}
