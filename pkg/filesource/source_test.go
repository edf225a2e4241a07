package filesource

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const waitFor = 5 * time.Second

// eventually polls cond until it holds or waitFor passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitFor, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// logRecorder is a slog.Handler that keeps every record.
type logRecorder struct {
	mu      sync.Mutex
	records []slog.Record
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logRecorder) WithGroup(string) slog.Handler            { return h }
func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.records = append(h.records, r.Clone())
	return nil
}

// count returns how many records at level have a message containing msg.
func (h *logRecorder) count(level slog.Level, msg string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, r := range h.records {
		if r.Level == level && strings.Contains(r.Message, msg) {
			n++
		}
	}
	return n
}

// find returns the attributes (as strings) of each record at level whose
// message contains msg.
func (h *logRecorder) find(level slog.Level, msg string) []map[string]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []map[string]string
	for _, r := range h.records {
		if r.Level != level || !strings.Contains(r.Message, msg) {
			continue
		}
		attrs := map[string]string{}
		r.Attrs(func(a slog.Attr) bool {
			attrs[a.Key] = a.Value.Resolve().String()
			return true
		})
		out = append(out, attrs)
	}
	return out
}

// harness runs a Source on a file in a temporary directory.
type harness struct {
	t       *testing.T
	path    string
	src     *Source
	logs    *logRecorder
	changes atomic.Int32
	loads   atomic.Int32
	done    chan error
	cancel  context.CancelFunc
}

// start runs a Source for path; it is stopped (and checked to return nil) in
// t.Cleanup unless the test stops it first.
func start(t *testing.T, path string) *harness {
	t.Helper()
	return startHooked(t, path, nil)
}

// startHooked is start with hook called on the Source before it runs.
func startHooked(t *testing.T, path string, hook func(*Source)) *harness {
	t.Helper()
	h := &harness{t: t, path: path, logs: &logRecorder{}, done: make(chan error, 1)}
	src, err := New(Options{
		Path:         path,
		Logger:       slog.New(h.logs),
		OnChange:     func() { h.changes.Add(1) },
		PollInterval: 10 * time.Millisecond,
		Debounce:     20 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	src.loaded = func() { h.loads.Add(1) }
	if hook != nil {
		hook(src)
	}
	h.src = src
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- src.Run(ctx) }()
	t.Cleanup(h.stop)
	return h
}

func (h *harness) stop() {
	h.t.Helper()
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.cancel = nil
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("Run returned %v, want nil", err)
		}
	case <-time.After(waitFor):
		h.t.Errorf("Run did not return within %v of cancel", waitFor)
	}
}

func (h *harness) services() []string {
	var out []string
	for _, s := range h.src.Input().Services {
		out = append(out, s.Name)
	}
	return out
}

// waitServices waits until the source offers exactly the services names.
func (h *harness) waitServices(names ...string) {
	h.t.Helper()
	eventually(h.t, "services "+strings.Join(names, ","), func() bool {
		return slices.Equal(h.services(), names)
	})
}

// waitLoads waits for n more load attempts after the current one.
func (h *harness) waitLoads(n int32) {
	h.t.Helper()
	target := h.loads.Load() + n
	eventually(h.t, "load attempts", func() bool { return h.loads.Load() >= target })
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// replace writes content to a temporary file and renames it over path, as
// editors and `kubectl cp`-style tools do.
func replace(t *testing.T, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	write(t, tmp, content)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestRun(t *testing.T) {
	goroutines := runtime.NumGoroutine()
	path := filepath.Join(t.TempDir(), "services.yaml")
	write(t, path, svc("a", "10.96.0.1"))
	h := start(t, path)

	eventually(t, "first sync", h.src.HasSynced)
	h.waitServices("a")
	eventually(t, "OnChange after first load", func() bool { return h.changes.Load() == 1 })

	steps := []struct {
		name    string
		update  func()
		want    []string // services after the step
		changed bool     // whether OnChange must fire
	}{{
		name:    "in-place write",
		update:  func() { write(t, path, svc("b", "10.96.0.2")) },
		want:    []string{"b"},
		changed: true,
	}, {
		name:    "write temp then rename",
		update:  func() { replace(t, path, svc("c", "10.96.0.3")+"---\n"+svc("d", "10.96.0.4")) },
		want:    []string{"c", "d"},
		changed: true,
	}, {
		name: "unsupported kind skipped, the rest applied",
		update: func() {
			write(t, path, svc("e", "10.96.0.5")+"---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
		},
		want:    []string{"e"},
		changed: true,
	}, {
		name: "same bytes again: no OnChange",
		update: func() {
			replace(t, path, svc("e", "10.96.0.5")+"---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
		},
		want: []string{"e"},
	}, {
		name: "file deleted: last good content kept",
		update: func() {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		},
		want: []string{"e"},
	}, {
		name:   "one document broken: whole file refused, last good content kept",
		update: func() { write(t, path, svc("x", "10.96.0.9")+"---\nkind: [\n") },
		want:   []string{"e"},
	}, {
		name:    "file back",
		update:  func() { write(t, path, svc("f", "10.96.0.6")) },
		want:    []string{"f"},
		changed: true,
	}}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			before := h.changes.Load()
			loads := h.loads.Load()
			step.update()
			if step.changed {
				h.waitServices(step.want...)
				// A write in progress is never read: exactly one OnChange.
				eventually(t, "OnChange", func() bool { return h.changes.Load() > before })
				if got := h.changes.Load() - before; got != 1 {
					t.Errorf("OnChange called %d times, want 1", got)
				}
				return
			}
			// Nothing to see change: wait until the source has looked at the
			// file since the update, then check that nothing moved.
			eventually(t, "a load after the update", func() bool { return h.loads.Load() > loads })
			if got := h.services(); !slices.Equal(got, step.want) {
				t.Errorf("services = %q, want %q", got, step.want)
			}
			if got := h.changes.Load(); got != before {
				t.Errorf("OnChange called %d times, want none", got-before)
			}
		})
	}

	if n := h.logs.count(slog.LevelWarn, "skipping objects of unsupported kinds"); n != 1 {
		t.Errorf("logged the skipped kind %d times, want 1 (once per content)", n)
	}
	if n := h.logs.count(slog.LevelError, "file refused"); n != 1 {
		t.Errorf("logged the refused file %d times, want 1", n)
	}
	if n := h.logs.count(slog.LevelError, "cannot read file"); n != 1 {
		t.Errorf("logged the read error %d times, want 1", n)
	}
	h.stop()
	eventually(t, "Run's goroutines to end", func() bool { return runtime.NumGoroutine() <= goroutines })
	if !h.src.HasSynced() || !slices.Equal(h.services(), []string{"f"}) {
		t.Errorf("after Run returned: synced %v, services %q", h.src.HasSynced(), h.services())
	}
}

func TestRunWaitsForFile(t *testing.T) {
	tests := []struct {
		name   string
		subdir bool // the file's directory does not exist either
	}{
		{name: "missing file"},
		{name: "missing directory", subdir: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.subdir {
				dir = filepath.Join(dir, "sub")
			}
			path := filepath.Join(dir, "services.yaml")
			h := start(t, path)

			h.waitLoads(3) // several retries
			if h.src.HasSynced() || len(h.src.Input().Services) != 0 || h.changes.Load() != 0 {
				t.Fatalf("synced %v with %d services, %d changes before the file exists",
					h.src.HasSynced(), len(h.src.Input().Services), h.changes.Load())
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			write(t, path, svc("a", "10.96.0.1"))
			eventually(t, "sync", h.src.HasSynced)
			h.waitServices("a")
			eventually(t, "OnChange", func() bool { return h.changes.Load() == 1 })
			if n := h.logs.count(slog.LevelWarn, "cannot read file"); n != 1 {
				t.Errorf("logged the missing file %d times, want once", n)
			}
			if tt.subdir {
				if n := h.logs.count(slog.LevelWarn, "cannot watch"); n != 1 {
					t.Errorf("logged the missing directory %d times, want once", n)
				}
				// The directory is watched now: a change is seen.
				write(t, path, svc("b", "10.96.0.2"))
				h.waitServices("b")
			}
		})
	}
}

// TestRunConfigMapSwap follows the kubelet's ConfigMap volume layout: the file
// is a symlink through "..data", which is swapped atomically by a rename.
func TestRunConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	link := func(target, name string) {
		t.Helper()
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	version := func(v, content string) {
		t.Helper()
		if err := os.Mkdir(filepath.Join(dir, v), 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, v, "services.yaml"), content)
	}
	version("..v1", svc("a", "10.96.0.1"))
	link("..v1", "..data")
	link("..data/services.yaml", "services.yaml")

	h := start(t, filepath.Join(dir, "services.yaml"))
	h.waitServices("a")

	version("..v2", svc("b", "10.96.0.2"))
	link("..v2", "..data_tmp")
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	h.waitServices("b")
	eventually(t, "OnChange", func() bool { return h.changes.Load() == 2 })
}

func TestRunTwice(t *testing.T) {
	path := filepath.Join(t.TempDir(), "services.yaml")
	write(t, path, svc("a", "10.96.0.1"))
	h := start(t, path)
	eventually(t, "sync", h.src.HasSynced)
	if err := h.src.Run(context.Background()); !errors.Is(err, ErrRunning) {
		t.Errorf("second Run = %v, want ErrRunning", err)
	}
}

func TestNew(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		wantErr bool
	}{
		{name: "no path", opts: Options{}, wantErr: true},
		{name: "negative poll interval", opts: Options{Path: "x.yaml", PollInterval: -1}, wantErr: true},
		{name: "defaults", opts: Options{Path: "x.yaml"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(tt.opts)
			if (err != nil) != tt.wantErr {
				t.Fatalf("New(%+v) error = %v, want error %v", tt.opts, err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if !filepath.IsAbs(s.path) || s.poll != defaultPollInterval || s.debounce != defaultDebounce || s.log == nil {
				t.Errorf("New(%+v) = path %q poll %v debounce %v", tt.opts, s.path, s.poll, s.debounce)
			}
			if s.HasSynced() || len(s.Input().Services) != 0 {
				t.Errorf("new Source synced %v", s.HasSynced())
			}
		})
	}
}
