// Package nodeaddr owns the node's local addresses: the set of IPv4 and
// IPv6 addresses at which a local socket reaches this node, so that the
// agent can program NodePort frontends on each of them. It finds them with
// netlink and keeps watching them; it never changes any address.
//
// Which addresses count (see nodeAddr for the details): every unicast
// address of global, site or host scope on any interface, up or down,
// loopback included (127.0.0.1, ::1), minus link-local, multicast,
// unspecified, and IPv6 addresses still tentative or whose duplicate
// address detection failed. This is the set the kernel itself treats as
// local (kube-proxy's `--dst-type LOCAL` in iptables mode, net.InterfaceAddrs
// for nodePortAddresses), not the "primary address per device" that kube-proxy's
// nftables mode and Cilium use for packets arriving from outside: socklb
// rewrites connect() on the node, where a socket may use any of them, and,
// like Cilium's socket LB, it serves NodePorts on loopback too (the rewrite
// happens before routing, so route_localnet plays no part). An address is
// listed as itself; its prefix is not expanded (127.0.0.1 is listed, not
// the rest of 127.0.0.0/8).
package nodeaddr

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const (
	// minBackoff and maxBackoff bound the wait before a new subscription
	// and full list after the previous one failed.
	minBackoff = 200 * time.Millisecond
	maxBackoff = 30 * time.Second
	// healthyAfter: a subscription that lived this long before failing
	// was healthy, and the next failure starts again from minBackoff.
	healthyAfter = time.Minute
	// listTimeout bounds one address dump, so that Run notices a
	// cancelled context even if the kernel never answers.
	listTimeout = 10 * time.Second
	// listAttempts is how often a dump that the kernel interrupted
	// (addresses or links changed meanwhile) is retried at once.
	listAttempts = 3
)

// Options configure a Watcher.
type Options struct {
	Logger *slog.Logger
	// OnChange is called after the first full list (when HasSynced turns
	// true) and after every change of the address set, from Run's
	// goroutine. It must not block: it pokes a syncer, which rate-limits.
	OnChange func()
	// Netns, if set, is the path of a network namespace, such as
	// /var/run/netns/NAME: the Watcher watches that namespace instead of
	// the caller's (tests, and an agent started in a test namespace).
	Netns string
}

// Watcher keeps the node's address set. Create it with New, start it with
// Run; Addresses and HasSynced may be called from any goroutine.
type Watcher struct {
	log       *slog.Logger
	onChange  func()
	netnsPath string

	// subscribe is netlink.AddrSubscribeWithOptions; tests wrap it.
	subscribe func(chan<- netlink.AddrUpdate, <-chan struct{}, netlink.AddrSubscribeOptions) error

	running atomic.Bool
	synced  atomic.Bool
	mu      sync.Mutex
	addrs   []netip.Addr // sorted, unique; replaced, never modified
}

// New checks the options; Run does the work.
func New(opts Options) (*Watcher, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.OnChange == nil {
		opts.OnChange = func() {}
	}
	if opts.Netns != "" {
		if !filepath.IsAbs(opts.Netns) {
			return nil, fmt.Errorf("nodeaddr: netns path %q is not absolute", opts.Netns)
		}
		if _, err := os.Stat(opts.Netns); err != nil {
			return nil, fmt.Errorf("nodeaddr: netns: %w", err)
		}
	}
	return &Watcher{
		log:       opts.Logger,
		onChange:  opts.OnChange,
		netnsPath: opts.Netns,
		subscribe: netlink.AddrSubscribeWithOptions,
	}, nil
}

// Addresses returns the current node addresses, sorted (IPv4 first) and
// unique. Before HasSynced it is empty. The caller owns the slice.
func (w *Watcher) Addresses() []netip.Addr {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.addrs)
}

// HasSynced reports whether a full list of the addresses has been taken.
// It stays true afterwards, also while Run recovers from an error (then
// Addresses is the last set known).
func (w *Watcher) HasSynced() bool { return w.synced.Load() }

// Run watches the addresses until ctx is cancelled, then returns nil. It
// subscribes to address changes first and then lists all addresses, so
// that no change falls between the two; after that, each batch of change
// notifications leads to a new full list (a dump of the address table,
// which is small). If the subscription fails (for example when the kernel
// dropped notifications because the socket buffer was full), Run
// subscribes and lists again after a backoff. It returns an error only
// when the network namespace cannot be opened, or when it is already
// running.
//
// Notifications only say that something changed: the address set is
// always taken from a complete list, never pieced together from events.
// Events cannot tell a new address from a changed one (an IPv6 address
// that finished DAD is announced again) and carry no peer, and
// netlink.AddrSubscribeOptions.ListExisting would hide where its initial
// dump ends, so HasSynced could not be known.
func (w *Watcher) Run(ctx context.Context) error {
	if !w.running.CompareAndSwap(false, true) {
		return errors.New("nodeaddr: already running")
	}
	defer w.running.Store(false)

	ns := netns.None()
	if w.netnsPath != "" {
		h, err := netns.GetFromPath(w.netnsPath)
		if err != nil {
			return fmt.Errorf("nodeaddr: open netns %s: %w", w.netnsPath, err)
		}
		defer h.Close()
		ns = h
	}

	backoff := minBackoff
	for {
		start := time.Now()
		err := w.watch(ctx, ns)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) >= healthyAfter {
			backoff = minBackoff
		}
		w.log.Warn("node address watch failed, listing again", "error", err, "retry_in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// watch runs one subscription: it subscribes, lists, and lists again after
// each batch of notifications, until ctx ends or the subscription fails.
// It always returns an error; when ctx ended, the caller ignores it.
func (w *Watcher) watch(ctx context.Context, ns netns.NsHandle) error {
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open netlink socket: %w", err)
	}
	defer h.Close()
	if err := h.SetSocketTimeout(listTimeout); err != nil {
		return fmt.Errorf("set netlink socket timeout: %w", err)
	}

	updates := make(chan netlink.AddrUpdate, 64)
	done := make(chan struct{})
	errc := make(chan error, 1)
	opts := netlink.AddrSubscribeOptions{
		ErrorCallback: func(err error) {
			select {
			case errc <- err:
			default: // one reason to start over is enough
			}
		},
	}
	if ns.IsOpen() {
		opts.Namespace = &ns
	}
	if err := w.subscribe(updates, done, opts); err != nil {
		close(done)
		return fmt.Errorf("subscribe to address changes: %w", err)
	}
	defer func() {
		// Closing done closes the socket; the library's receiver then
		// fails, calls ErrorCallback (which never blocks) and closes
		// updates. Drain updates so that it is never stuck sending.
		close(done)
		for range updates {
		}
	}()

	for {
		if err := w.list(h); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errc:
			return fmt.Errorf("address subscription: %w", err)
		case _, ok := <-updates:
			if !ok {
				return subscriptionClosed(errc)
			}
		}
		// Take every notification already queued: one list covers them.
		for drained := false; !drained; {
			select {
			case _, ok := <-updates:
				if !ok {
					return subscriptionClosed(errc)
				}
			default:
				drained = true
			}
		}
	}
}

func subscriptionClosed(errc <-chan error) error {
	select {
	case err := <-errc:
		return fmt.Errorf("address subscription: %w", err)
	default:
		return errors.New("address subscription closed")
	}
}

// list dumps the addresses and publishes the node address set.
func (w *Watcher) list(h *netlink.Handle) error {
	var (
		all []netlink.Addr
		err error
	)
	for range listAttempts {
		all, err = h.AddrList(nil, netlink.FAMILY_ALL)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	w.publish(nodeAddrs(all))
	return nil
}

// publish stores next and, if it differs from the current set or is the
// first full list, logs the change and calls OnChange.
func (w *Watcher) publish(next []netip.Addr) {
	w.mu.Lock()
	prev := w.addrs
	first := !w.synced.Load()
	changed := !slices.Equal(prev, next)
	if changed {
		w.addrs = next
	}
	w.synced.Store(true) // after addrs: HasSynced implies a full list
	w.mu.Unlock()

	if !changed && !first {
		return
	}
	added, removed := diff(prev, next)
	msg := "node addresses changed"
	if first {
		msg = "node addresses listed"
	}
	w.log.Info(msg, "added", added, "removed", removed, "count", len(next))
	w.onChange()
}
