// Package filesource owns socklb's file source: it reads a multi-document
// YAML file of Kubernetes v1 Services and discovery.k8s.io/v1 EndpointSlices
// (as `kubectl apply -f` takes it), offers the latest good content as an
// lb.Input, and reloads it when the file changes. It never touches maps; it
// only pokes the syncer through Options.OnChange.
//
// A file is applied whole or not at all (rules.go): one broken document, or
// a file with no objects at all, is refused and logged with the document,
// line and object, and the last good content stays in force; only objects of
// kinds socklb does not read are skipped. A write in progress is never read
// (read.go): the file is read under a read lease, which the kernel grants
// only while nobody has it open for writing. A file that cannot be read
// leaves the last good content in place too.
package filesource

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/socklb/socklb/pkg/lb"
)

const (
	defaultPollInterval = time.Second
	defaultDebounce     = 100 * time.Millisecond
	// MaxFileSize bounds what a load reads into memory; a larger file is a
	// read error (the last good content stays).
	MaxFileSize = 64 << 20
	// configMapData is the symlink the kubelet swaps atomically when a
	// ConfigMap or Secret volume changes; the files are links through it.
	configMapData = "..data"
)

// ErrRunning is returned by Run when the Source is already running.
var ErrRunning = errors.New("filesource: already running")

// Options configure a Source.
type Options struct {
	// Path is the YAML file to read. Required.
	Path string
	// Logger receives the load and error logs. Nil discards them.
	Logger *slog.Logger
	// OnChange is called from Run's goroutine after every load whose content
	// differs from the previous one (the first successful load included). It
	// must not block: it is meant to poke a syncer. May be nil.
	OnChange func()
	// PollInterval is how often Run retries while the file cannot be read or
	// its directory cannot be watched. Zero means one second.
	PollInterval time.Duration
	// Debounce is how long Run waits after the first change event of a burst
	// before it reads the file. Zero means 100ms.
	Debounce time.Duration
}

// Source is the file source. Input and HasSynced are safe for concurrent use
// with Run.
type Source struct {
	path, dir, name string
	log             *slog.Logger
	onChange        func()
	poll, debounce  time.Duration

	running atomic.Bool
	input   atomic.Pointer[lb.Input] // nil until the first successful read

	// lease takes the read lease (readFile); tests replace it.
	lease leaseFunc
	// loaded, if set, is called after every load attempt (tests).
	loaded func()
}

// New checks opts and returns a Source. It does not read the file: Run does.
func New(opts Options) (*Source, error) {
	if opts.Path == "" {
		return nil, errors.New("filesource: no path")
	}
	path, err := filepath.Abs(opts.Path)
	if err != nil {
		return nil, fmt.Errorf("filesource: resolve %s: %w", opts.Path, err)
	}
	if opts.PollInterval < 0 || opts.Debounce < 0 {
		return nil, errors.New("filesource: negative interval")
	}
	s := &Source{
		path:     path,
		dir:      filepath.Dir(path),
		name:     filepath.Base(path),
		log:      opts.Logger,
		onChange: opts.OnChange,
		poll:     cmp.Or(opts.PollInterval, defaultPollInterval),
		debounce: cmp.Or(opts.Debounce, defaultDebounce),
		lease:    lease,
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.log = s.log.With("path", path)
	return s, nil
}

// Input returns the latest successfully read content; it is empty before the
// first one. Callers must not modify it: the objects are shared.
func (s *Source) Input() lb.Input {
	if in := s.input.Load(); in != nil {
		return *in
	}
	return lb.Input{}
}

// HasSynced reports whether a good file has been read at least once. A
// missing, empty or refused file on the first read keeps it false, so that
// nothing is programmed from a file that is not there yet.
func (s *Source) HasSynced() bool { return s.input.Load() != nil }

// Run reads the file, then watches its directory and reloads it on change
// until ctx is done. While the file cannot be read it retries every
// PollInterval, and while it is open for writing it looks again every
// PollInterval. It returns nil when ctx is done, ErrRunning if it is already
// running.
func (s *Source) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer s.running.Store(false)

	r := &run{Source: s}
	defer r.closeWatcher()

	ticker := time.NewTicker(s.poll)
	defer ticker.Stop()
	debounce := time.NewTimer(s.debounce)
	debounce.Stop()
	defer debounce.Stop()
	pending := false
	schedule := func() {
		if !pending { // the first event of a burst arms the timer; later ones ride along
			pending = true
			debounce.Reset(s.debounce)
		}
	}
	load := func() {
		if r.load() {
			schedule()
		}
	}
	r.watch()
	load()

	for {
		var (
			events <-chan fsnotify.Event
			errs   <-chan error
		)
		if r.w != nil {
			events, errs = r.w.Events, r.w.Errors
		}
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				r.closeWatcher()
				continue
			}
			if r.relevant(ev) {
				schedule()
			}
		case err, ok := <-errs:
			if !ok {
				r.closeWatcher()
				continue
			}
			// Typically an event queue overflow: events may be lost, so read again.
			s.log.Warn("file watch error; reloading", "err", err)
			schedule()
		case <-debounce.C:
			pending = false
			load()
		case <-ticker.C:
			if !r.watching && r.watch() {
				load() // the file may have changed while unwatched
				continue
			}
			// No event tells that a writer closed the file: look again.
			if !r.watching || !s.HasSynced() || r.busy {
				load()
			}
		}
	}
}

// run is the state of one Run call; only Run's goroutine touches it.
type run struct {
	*Source
	w        *fsnotify.Watcher
	watching bool   // the directory is being watched
	raw      []byte // content of the last successful load
	readErr  string // last read error logged, so that it is logged once
	watchErr string // last watch error logged
	// refused is the hash of the last refused content, so that a refusal
	// is logged once per content and not on every poll.
	refused *[sha256.Size]byte

	busy       bool      // the last read found the file open for writing
	busySince  time.Time // when it was first found so
	busyLogged bool      // that was logged at info
	noLease    bool      // leases do not work here: use the stability check
	candidate  *snapshot // without leases: the content waiting to be seen again
}

// watch makes sure the directory is watched and reports whether it is.
func (r *run) watch() bool {
	if r.watching {
		return true
	}
	if r.w == nil {
		w, err := fsnotify.NewWatcher()
		if err != nil {
			r.watchFailed(fmt.Errorf("create watcher: %w", err))
			return false
		}
		r.w = w
	}
	if err := r.w.Add(r.dir); err != nil {
		r.watchFailed(fmt.Errorf("watch %s: %w", r.dir, err))
		return false
	}
	r.watching = true
	if r.watchErr != "" {
		r.log.Info("watching the file's directory again", "dir", r.dir)
		r.watchErr = ""
	}
	return true
}

func (r *run) watchFailed(err error) {
	if msg := err.Error(); msg != r.watchErr {
		r.watchErr = msg
		r.log.Warn("cannot watch file; polling until it works", "interval", r.poll, "err", err)
	}
}

func (r *run) closeWatcher() {
	if r.w != nil {
		if err := r.w.Close(); err != nil {
			r.log.Debug("close file watcher", "err", err)
		}
	}
	r.w, r.watching = nil, false
}

// relevant reports whether ev may have changed the file. Events for the
// directory itself mean the watch is gone (directory removed or renamed).
func (r *run) relevant(ev fsnotify.Event) bool {
	name := filepath.Clean(ev.Name)
	switch {
	case name == r.path:
		return true
	case name == r.dir:
		if !slices.Contains(r.w.WatchList(), r.dir) {
			r.watching = false
		}
		return true
	case filepath.Dir(name) == r.dir && filepath.Base(name) == configMapData:
		return true
	}
	return false
}

// load reads the file and, if its content changed and passes the rules,
// publishes it and calls OnChange. A read error or a refused content keeps
// the last good content. It reports whether to look again after the debounce
// interval (the stability check without leases).
func (r *run) load() (recheck bool) {
	if r.loaded != nil {
		defer r.loaded()
	}
	raw, err := r.read()
	r.busy = errors.Is(err, errBusy)
	switch {
	case r.busy:
		return false // the ticker looks again
	case errors.Is(err, errUnsettled):
		return true
	case err != nil:
		if msg := err.Error(); msg != r.readErr {
			r.readErr = msg
			if r.HasSynced() {
				r.log.Error("cannot read file; keeping the last good content", "err", err)
			} else {
				r.log.Warn("cannot read file; waiting for it", "interval", r.poll, "err", err)
			}
		}
		return false
	}
	recovered := r.readErr != ""
	r.readErr = ""
	if r.HasSynced() && bytes.Equal(raw, r.raw) {
		switch {
		case r.refused != nil:
			r.log.Info("file is back to the content in force")
		case recovered:
			r.log.Info("file readable again; content unchanged")
		default:
			r.log.Debug("file unchanged")
		}
		r.refused = nil
		return false
	}
	sum := sha256.Sum256(raw)
	if r.refused != nil && *r.refused == sum {
		r.log.Debug("file unchanged; still refused")
		return false
	}
	c, ref := parseContent(raw)
	if ref != nil {
		r.refused = &sum
		r.logRefusal(ref)
		return false
	}
	r.refused = nil
	skipped := 0
	for _, k := range c.skipped {
		skipped += k.count
		r.log.Warn("skipping objects of unsupported kinds", "apiVersion", k.apiVersion, "kind", k.kind, "count", k.count)
	}
	if n := len(c.duplicates); n > 0 {
		r.log.Warn("objects defined more than once; the later definition is used", "count", n, "objects", firstNames(c.duplicates))
	}
	r.raw = raw
	r.log.Info("loaded file", "services", len(c.in.Services), "endpointSlices", len(c.in.EndpointSlices), "skipped", skipped)
	r.input.Store(&c.in)
	if r.onChange != nil {
		r.onChange()
	}
	return false
}

// emptyListHint tells how to ask for no Services, since an empty file is refused.
const emptyListHint = "to remove every Service write an empty List: `apiVersion: v1` / `kind: List` / `items: []`"

// logRefusal logs why a content was refused: each broken document (up to
// maxNames of them) with its number, line and object.
func (r *run) logRefusal(ref *refusal) {
	keeping := "keeping the last good content"
	if !r.HasSynced() {
		keeping = "nothing applied yet"
	}
	if len(ref.bad) == 0 {
		attrs := []any{}
		for _, k := range ref.skipped {
			attrs = append(attrs, "skippedKind", k.apiVersion+" "+k.kind, "count", k.count)
		}
		r.log.Error("file has no objects; "+keeping+"; "+emptyListHint, attrs...)
		return
	}
	for i, de := range ref.bad {
		if i == maxNames {
			r.log.Error("more broken documents in the refused file", "count", len(ref.bad)-maxNames)
			break
		}
		attrs := []any{"document", de.Index, "line", cmp.Or(de.ErrLine, de.Line), "documentLine", de.Line}
		if de.Object != "" {
			attrs = append(attrs, "object", de.Object)
		}
		attrs = append(attrs, "brokenDocuments", len(ref.bad), "err", de.Err)
		r.log.Error("file refused: broken document; "+keeping, attrs...)
	}
}

// firstNames returns names capped at maxNames, for a log line.
func firstNames(names []string) []string {
	if len(names) > maxNames {
		return append(names[:maxNames:maxNames], fmt.Sprintf("and %d more", len(names)-maxNames))
	}
	return names
}
