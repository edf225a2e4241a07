package filesource

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

var (
	// errBusy: some process has the file open for writing (the lease was
	// refused); read it once the writer has closed it.
	errBusy = errors.New("file is open for writing")
	// errNoLease: leases do not work for this file; the stability check
	// stands in for them.
	errNoLease = errors.New("file leases not available")
	// errUnsettled: without leases, the file has not yet been seen the same
	// across one debounce interval.
	errUnsettled = errors.New("file not yet seen unchanged for the debounce interval")
)

// leaseFunc takes a read lease on an open file and returns its release.
type leaseFunc func(*os.File) (release func() error, err error)

// busyLogAfter is how long the file may stay open for writing before that is
// logged at info: an editor or a slow `cmd > file` is normal, a writer that
// never closes it is worth a line.
const busyLogAfter = 5 * time.Second

// snapshot is one read of the file.
type snapshot struct {
	data  []byte
	size  int64
	mtime time.Time
	at    time.Time // when it was read
}

func (s *snapshot) same(o *snapshot) bool {
	return s.size == o.size && s.mtime.Equal(o.mtime) && bytes.Equal(s.data, o.data)
}

// readFile reads path, refusing anything but a regular file and files over
// MaxFileSize. With a lease function it holds a read lease while it reads
// (errBusy if the file is open for writing, errNoLease if leases do not work
// here).
func readFile(path string, lease leaseFunc) (snapshot, error) {
	f, err := os.OpenFile(path, openFlags, 0)
	if err != nil {
		return snapshot{}, err // *PathError already names the operation and path
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return snapshot{}, fmt.Errorf("stat %s: %w", path, err)
	}
	if fi.IsDir() {
		return snapshot{}, fmt.Errorf("read %s: is a directory", path)
	}
	if !fi.Mode().IsRegular() {
		return snapshot{}, fmt.Errorf("read %s: not a regular file (%v)", path, fi.Mode().Type())
	}
	if lease != nil {
		release, err := lease(f)
		if err != nil {
			return snapshot{}, err
		}
		// Released right after the read: a writer that opens the file
		// meanwhile waits for it (up to fs.lease-break-time).
		defer func() { _ = release() }() // an error is harmless: closing f drops the lease too
		// The file may have changed between Stat and the lease.
		if fi, err = f.Stat(); err != nil {
			return snapshot{}, fmt.Errorf("stat %s: %w", path, err)
		}
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return snapshot{}, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > MaxFileSize {
		return snapshot{}, fmt.Errorf("read %s: larger than %d bytes", path, MaxFileSize)
	}
	return snapshot{data: data, size: fi.Size(), mtime: fi.ModTime(), at: time.Now()}, nil
}

// read reads the file so that a write in progress is never seen: under a
// read lease, or, where leases do not work, once it has stayed the same for
// one debounce interval. It returns errBusy and errUnsettled for "not now".
func (r *run) read() ([]byte, error) {
	lf := r.lease
	if r.noLease {
		lf = nil
	}
	snap, err := readFile(r.path, lf)
	if errors.Is(err, errNoLease) {
		r.noLease = true
		r.log.Info("file leases do not work here; a change is read once the file stays unchanged for the debounce interval",
			"debounce", r.debounce, "err", err)
		snap, err = readFile(r.path, nil)
	}
	if errors.Is(err, errBusy) {
		now := time.Now()
		if r.busySince.IsZero() {
			r.busySince = now
		}
		r.log.Debug("file is open for writing; waiting")
		if !r.busyLogged && now.Sub(r.busySince) >= busyLogAfter {
			r.busyLogged = true
			r.log.Info("file is open for writing; waiting", "since", r.busySince)
		}
		return nil, err
	}
	if r.busyLogged {
		r.log.Info("file no longer open for writing", "waited", time.Since(r.busySince).Round(time.Millisecond))
	}
	r.busySince, r.busyLogged = time.Time{}, false
	if err != nil {
		r.candidate = nil
		return nil, err
	}
	if r.noLease {
		prev := r.candidate
		if prev == nil || !prev.same(&snap) {
			r.candidate = &snap // the interval starts at the first sight of this content
			r.log.Debug("file read; checking that it stays unchanged", "debounce", r.debounce)
			return nil, errUnsettled
		}
		if snap.at.Sub(prev.at) < r.debounce {
			return nil, errUnsettled
		}
		r.candidate = nil
	}
	return snap.data, nil
}
