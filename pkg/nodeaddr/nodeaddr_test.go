package nodeaddr

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/socklb/socklb/internal/sandbox"
)

// waitTimeout bounds every wait in these tests.
const waitTimeout = 5 * time.Second

// started is a Watcher running in the background of a test.
type started struct {
	w       *Watcher
	changes atomic.Int64 // OnChange calls
	// notified is the address list as OnChange last saw it: Addresses
	// changes before OnChange runs, so only this says the call was made.
	notified atomic.Pointer[[]netip.Addr]
	cancel   context.CancelFunc
	done     chan error // Run's result
}

// start runs a Watcher on opts until stop or the end of the test.
func start(t *testing.T, opts Options, wrap func(*Watcher)) *started {
	t.Helper()
	s := &started{done: make(chan error, 1)}
	opts.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	opts.OnChange = func() {
		// Counted before it is seen, so that waitNotified implies the
		// count.
		s.changes.Add(1)
		a := s.w.Addresses()
		s.notified.Store(&a)
	}
	w, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if wrap != nil {
		wrap(w)
	}
	s.w = w
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() { s.done <- w.Run(ctx) }()
	t.Cleanup(func() { s.stop(t) })
	return s
}

// stop cancels Run and checks that it returns nil promptly; it may be
// called more than once.
func (s *started) stop(t *testing.T) {
	t.Helper()
	s.cancel()
	select {
	case err, ok := <-s.done:
		if ok && err != nil {
			t.Errorf("Run returned %v after cancel, want nil", err)
		}
		if ok {
			close(s.done)
		}
	case <-time.After(waitTimeout):
		t.Fatalf("Run did not return within %v of cancel", waitTimeout)
	}
}

// waitFor polls cond until it holds or waitTimeout passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitNotified waits until OnChange has been called for want.
func waitNotified(t *testing.T, s *started, want []netip.Addr) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		got := s.notified.Load()
		if got != nil && slices.Equal(*got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v: OnChange saw %v last, want %v", waitTimeout, got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitAddrs waits until the watcher's addresses are want.
func waitAddrs(t *testing.T, w *Watcher, want []netip.Addr) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		got := w.Addresses()
		if slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v: addresses %v, want %v", waitTimeout, got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitGoroutines waits until no more goroutines run than before: Run
// leaves none behind (the library's receiver and closer included).
func waitGoroutines(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines after Run returned, %d before:\n%s",
				runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// loAddr adds (or, when del, deletes) an address on lo inside ns with the
// netlink calls made from a thread in ns. IPv6 addresses get nodad.
func loAddr(t *testing.T, ns *sandbox.Netns, prefix string, del bool) {
	t.Helper()
	p := netip.MustParsePrefix(prefix)
	a := &netlink.Addr{IPNet: &net.IPNet{
		IP:   p.Addr().AsSlice(),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	op := "add"
	if del {
		op = "delete"
	}
	err := ns.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if del {
			return netlink.AddrDel(lo, a)
		}
		return netlink.AddrAdd(lo, a)
	})
	if err != nil {
		t.Fatalf("%s %s on lo in netns %s: %v", op, prefix, ns, err)
	}
}

func addAddr(t *testing.T, ns *sandbox.Netns, prefix string) {
	t.Helper()
	if err := ns.AddAddr(netip.MustParsePrefix(prefix)); err != nil {
		t.Fatal(err)
	}
}

func TestPrivilegedWatch(t *testing.T) {
	sandbox.RequirePrivileges(t)
	ns := sandbox.NewNetns(t)
	goroutines := runtime.NumGoroutine()
	s := start(t, Options{Netns: ns.Path()}, nil)

	waitFor(t, "HasSynced", s.w.HasSynced)
	want := addrs("127.0.0.1", "::1")
	if got := s.w.Addresses(); !slices.Equal(got, want) {
		t.Fatalf("fresh netns: addresses %v, want %v", got, want)
	}
	waitFor(t, "OnChange after the first list", func() bool { return s.changes.Load() == 1 })

	// Adding: both families show up.
	addAddr(t, ns, "198.18.0.7/32")
	addAddr(t, ns, "2001:2::7/128")
	waitNotified(t, s, addrs("127.0.0.1", "198.18.0.7", "::1", "2001:2::7"))
	if n := s.changes.Load(); n < 2 || n > 3 {
		t.Errorf("OnChange called %d times after two additions, want 2 or 3 in all", n)
	}

	// Deleting: it goes.
	loAddr(t, ns, "198.18.0.7/32", true)
	waitNotified(t, s, addrs("127.0.0.1", "::1", "2001:2::7"))

	// A link-local address changes nothing: no OnChange for it. The
	// address added after it is seen only after it (the kernel announces
	// them in order, and every list is complete), so exactly one OnChange
	// means none came for the link-local one.
	before := s.changes.Load()
	loAddr(t, ns, "fe80::1/64", false)
	addAddr(t, ns, "198.18.0.8/32")
	waitNotified(t, s, addrs("127.0.0.1", "198.18.0.8", "::1", "2001:2::7"))
	time.Sleep(100 * time.Millisecond) // let a late notification be handled
	if n := s.changes.Load() - before; n != 1 {
		t.Errorf("OnChange called %d times for a link-local and a global address, want 1", n)
	}
	if got := s.w.Addresses(); slices.Contains(got, netip.MustParseAddr("fe80::1")) {
		t.Errorf("link-local address listed: %v", got)
	}

	s.stop(t)
	if !s.w.HasSynced() {
		t.Error("HasSynced false after Run returned")
	}
	waitGoroutines(t, goroutines)
}

// TestPrivilegedResubscribe makes the first subscription fail and the
// second one report an error, and checks that the Watcher lists again
// (finding an address added while it was not subscribed) and keeps
// following changes on the third.
func TestPrivilegedResubscribe(t *testing.T) {
	sandbox.RequirePrivileges(t)
	ns := sandbox.NewNetns(t)
	goroutines := runtime.NumGoroutine()
	var calls atomic.Int64
	s := start(t, Options{Netns: ns.Path()}, func(w *Watcher) {
		w.subscribe = func(ch chan<- netlink.AddrUpdate, done <-chan struct{}, opts netlink.AddrSubscribeOptions) error {
			switch calls.Add(1) {
			case 1:
				return errors.New("injected subscribe failure")
			case 2:
				if err := netlink.AddrSubscribeWithOptions(ch, done, opts); err != nil {
					return err
				}
				opts.ErrorCallback(errors.New("injected receive failure"))
				return nil
			case 3:
				// Added while no subscription runs: only the new
				// full list can find it.
				if err := ns.AddAddr(netip.MustParsePrefix("198.18.0.10/32")); err != nil {
					return err
				}
				return netlink.AddrSubscribeWithOptions(ch, done, opts)
			default:
				return netlink.AddrSubscribeWithOptions(ch, done, opts)
			}
		}
	})

	waitFor(t, "HasSynced", s.w.HasSynced)
	if n := calls.Load(); n < 2 {
		t.Errorf("synced after %d subscriptions, want the second", n)
	}
	waitAddrs(t, s.w, addrs("127.0.0.1", "198.18.0.10", "::1"))
	addAddr(t, ns, "198.18.0.9/32")
	waitAddrs(t, s.w, addrs("127.0.0.1", "198.18.0.9", "198.18.0.10", "::1"))
	if n := calls.Load(); n != 3 {
		t.Errorf("%d subscriptions, want 3", n)
	}

	s.stop(t)
	waitGoroutines(t, goroutines)
}

// TestPrivilegedHostNetns only reads: the caller's namespace (the host's)
// is listed without Netns, and a second Run is refused.
func TestPrivilegedHostNetns(t *testing.T) {
	sandbox.RequirePrivileges(t)
	s := start(t, Options{}, nil)
	waitFor(t, "HasSynced", s.w.HasSynced)
	got := s.w.Addresses()
	if !slices.IsSortedFunc(got, netip.Addr.Compare) || len(slices.Compact(slices.Clone(got))) != len(got) {
		t.Errorf("addresses not sorted and unique: %v", got)
	}
	if !slices.Contains(got, netip.MustParseAddr("127.0.0.1")) {
		t.Errorf("host addresses %v lack 127.0.0.1", got)
	}
	for _, a := range got {
		if _, reason := nodeAddr(netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice()}}); reason != "" || a.IsLinkLocalUnicast() {
			t.Errorf("listed %v, which the filter drops (%s)", a, reason)
		}
	}
	if err := s.w.Run(context.Background()); err == nil {
		t.Error("second concurrent Run returned nil, want an error")
	}
}
