// Package filesource owns socklb's file source: it reads a multi-document
// YAML file of Kubernetes v1 Services and discovery.k8s.io/v1 EndpointSlices
// (as `kubectl apply -f` takes it), offers the latest good content as an
// lb.Input, and reloads it when the file changes. It never touches maps; it
// only pokes the syncer through Options.OnChange.
//
// Decoding is partial on purpose: a document that cannot be used is reported
// and skipped, the others are applied. A file that cannot be read at all
// leaves the last good content in place.
package filesource

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
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
		poll:     cmpOr(opts.PollInterval, defaultPollInterval),
		debounce: cmpOr(opts.Debounce, defaultDebounce),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.log = s.log.With("path", path)
	return s, nil
}

func cmpOr(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// Input returns the latest successfully read content; it is empty before the
// first one. Callers must not modify it: the objects are shared.
func (s *Source) Input() lb.Input {
	if in := s.input.Load(); in != nil {
		return *in
	}
	return lb.Input{}
}

// HasSynced reports whether the file has been read successfully at least once.
func (s *Source) HasSynced() bool { return s.input.Load() != nil }

// Run reads the file, then watches its directory and reloads it on change
// until ctx is done. While the file cannot be read it retries every
// PollInterval. It returns nil when ctx is done, ErrRunning if it is already
// running.
func (s *Source) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer s.running.Store(false)

	r := &run{Source: s}
	defer r.closeWatcher()
	r.watch()
	r.load()

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
			r.load()
		case <-ticker.C:
			if !r.watching && r.watch() {
				r.load() // the file may have changed while unwatched
				continue
			}
			if !r.watching || !s.HasSynced() {
				r.load()
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

// load reads the file and, if its content changed, decodes it, publishes the
// result and calls OnChange. A read error keeps the last good content.
func (r *run) load() {
	if r.loaded != nil {
		defer r.loaded()
	}
	raw, err := readFile(r.path)
	if err != nil {
		if msg := err.Error(); msg != r.readErr {
			r.readErr = msg
			if r.HasSynced() {
				r.log.Error("cannot read file; keeping the last good content", "err", err)
			} else {
				r.log.Warn("cannot read file; waiting for it", "interval", r.poll, "err", err)
			}
		}
		return
	}
	recovered := r.readErr != ""
	r.readErr = ""
	if r.HasSynced() && bytes.Equal(raw, r.raw) {
		if recovered {
			r.log.Info("file readable again; content unchanged")
		} else {
			r.log.Debug("file unchanged")
		}
		return
	}
	in, errs := decodeBytes(raw)
	for _, err := range errs {
		var de *DocumentError
		if errors.As(err, &de) {
			r.log.Warn("skipping document", "document", de.Index, "line", de.Line, "err", de.Err)
		} else {
			r.log.Warn("skipping document", "err", err)
		}
	}
	r.raw = raw
	if len(errs) > 0 && len(in.Services)+len(in.EndpointSlices) == 0 {
		// A file where every document failed is a broken edit, not a
		// request to remove every service: keep what is programmed.
		r.log.Error("no document of the file could be used; keeping the last good content", "skipped", len(errs))
		return
	}
	r.log.Info("loaded file", "services", len(in.Services), "endpointSlices", len(in.EndpointSlices), "skipped", len(errs))
	r.input.Store(&in)
	if r.onChange != nil {
		r.onChange()
	}
}

// readFile reads path, refusing directories and files over MaxFileSize.
func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err // *PathError already names the operation and path
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	if fi.IsDir() {
		return nil, fmt.Errorf("read %s: is a directory", path)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("read %s: larger than %d bytes", path, MaxFileSize)
	}
	return data, nil
}
