package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NetnsDir is where named network namespaces live, the directory that
// `ip netns` uses (/var/run is a symlink to /run on these machines).
const NetnsDir = "/var/run/netns"

// Netns is a named network namespace that this package created. Its only
// interface is lo, which is up; it has no route out of the machine.
type Netns struct {
	name string
	path string
}

// NewNetns creates a network namespace named "socklb-t-<random>" with lo up
// and deletes it when the test ends.
func NewNetns(t testing.TB) *Netns {
	t.Helper()
	n, cleanup, err := CreateNetns("socklb-t-")
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() {
		if err := cleanup(); err != nil {
			t.Errorf("delete netns %s: %v", n.name, err)
		}
	})
	return n
}

// CreateNetns creates a network namespace named prefix+<random> under
// [NetnsDir] (so `nsenter --net=PATH` and `ip netns list` see it) and sets
// lo up in it. cleanup unmounts and removes the name; the namespace itself
// goes away once no socket or process uses it.
func CreateNetns(prefix string) (n *Netns, cleanup func() error, err error) {
	if err := checkPrefix(prefix); err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(NetnsDir, 0o755); err != nil {
		return nil, nil, fmt.Errorf("create %s: %w", NetnsDir, err)
	}
	name := prefix + randomSuffix()
	n = &Netns{name: name, path: filepath.Join(NetnsDir, name)}
	if err := bindNewNetns(n.path); err != nil {
		return nil, nil, fmt.Errorf("create netns %s: %w", name, err)
	}
	cleanup = n.delete
	if err := n.Do(setLoUp); err != nil {
		return nil, nil, errors.Join(fmt.Errorf("netns %s: %w", name, err), cleanup())
	}
	return n, cleanup, nil
}

// bindNewNetns makes a new network namespace and bind-mounts it on path,
// from a locked thread that is switched back afterwards. If switching back
// fails the thread stays locked, so the Go runtime discards it (or, for the
// main thread, parks it forever) instead of running goroutines in the new
// namespace.
func bindNewNetns(path string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open current netns: %w", err)
			return
		}
		defer unix.Close(orig)
		err = unshareAndBind(path)
		if rerr := unix.Setns(orig, unix.CLONE_NEWNET); rerr != nil {
			errc <- errors.Join(err, fmt.Errorf("return to original netns: %w", rerr))
			return // still locked: see above
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

func unshareAndBind(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return err
	}
	f.Close()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return errors.Join(fmt.Errorf("unshare: %w", err), os.Remove(path))
	}
	src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
	if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
		return errors.Join(fmt.Errorf("bind mount %s: %w", src, err), os.Remove(path))
	}
	return nil
}

func (n *Netns) delete() error {
	if err := unix.Unmount(n.path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", n.path, err)
	}
	if err := os.Remove(n.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func setLoUp() error {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	return nil
}

// Name is the namespace's name, as `ip netns list` shows it.
func (n *Netns) Name() string { return n.name }

// Path is the namespace's bind mount, /var/run/netns/NAME, for
// `nsenter --net=PATH` and setns(2).
func (n *Netns) Path() string { return n.path }

func (n *Netns) String() string { return n.name }

// Do runs fn on a locked OS thread switched into the namespace and waits for
// it. Sockets fn creates belong to the namespace and keep working from any
// goroutine afterwards. Goroutines that fn starts do NOT run in the
// namespace. fn must not unlock the OS thread.
//
// The thread is switched back afterwards, also when fn panics (the panic is
// re-raised in the caller) or calls runtime.Goexit (Do returns an error). If
// switching back fails the thread stays locked, and the Go runtime discards
// it when its goroutine exits, so no other goroutine ever runs in the wrong
// namespace.
func (n *Netns) Do(fn func() error) error {
	type result struct {
		err      error
		panicked bool
		panicVal any
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		res := result{err: fmt.Errorf("netns %s: fn exited its goroutine (runtime.Goexit, e.g. t.FailNow) inside Do", n.name)}
		defer func() { done <- res }()

		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			res.err = fmt.Errorf("open current netns: %w", err)
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open(n.path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			res.err = fmt.Errorf("open netns %s: %w", n.name, err)
			return
		}
		err = unix.Setns(target, unix.CLONE_NEWNET)
		unix.Close(target)
		if err != nil {
			runtime.UnlockOSThread() // a failed setns changes nothing
			res.err = fmt.Errorf("enter netns %s: %w", n.name, err)
			return
		}
		// Deferred so that it also runs on panic and Goexit. A goroutine
		// that exits locked kills its thread, except the main thread, which
		// the runtime parks forever instead (keeping the namespace alive and
		// making /proc/self/ns/net point at it), so always try to go back.
		defer func() {
			if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
				res.err = errors.Join(res.err, fmt.Errorf("leave netns %s: %w", n.name, err))
				return // stay locked: see above
			}
			runtime.UnlockOSThread()
		}()
		defer func() {
			if v := recover(); v != nil {
				res.err, res.panicked, res.panicVal = nil, true, v
			}
		}()
		res.err = fn()
	}()
	res := <-done
	if res.panicked {
		panic(res.panicVal)
	}
	return res.err
}

// AddAddr adds p to lo inside the namespace, e.g. 198.18.0.10/32. IPv6
// addresses get nodad so they are usable at once.
func (n *Netns) AddAddr(p netip.Prefix) error {
	if !p.IsValid() || p.Addr().Is4In6() {
		return fmt.Errorf("add address: invalid prefix %v", p)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{
		IP:   p.Addr().AsSlice(),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}}
	if p.Addr().Is6() {
		addr.Flags = unix.IFA_F_NODAD
	}
	err := n.Do(func() error {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink: %w", err)
		}
		defer h.Close()
		lo, err := h.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("find lo: %w", err)
		}
		if err := h.AddrAdd(lo, addr); err != nil {
			return err
		}
		return waitLocalRoute(h, p.Addr())
	})
	if err != nil {
		return fmt.Errorf("add %s to lo in netns %s: %w", p, n.name, err)
	}
	return nil
}

// localRouteTimeout bounds the wait for an IPv6 address's local route.
const localRouteTimeout = 5 * time.Second

// waitLocalRoute waits until a is routed locally. IPv4 local routes exist
// when RTM_NEWADDR returns; IPv6 ones are added later by the kernel's
// addrconf work (even with nodad), and until then connect() to the address
// fails with ENETUNREACH.
func waitLocalRoute(h *netlink.Handle, a netip.Addr) error {
	deadline := time.Now().Add(localRouteTimeout)
	for {
		routes, err := h.RouteGet(a.AsSlice())
		if err == nil && len(routes) > 0 && routes[0].Type == unix.RTN_LOCAL {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no local route to %s after %v (last lookup: %v, %v)", a, localRouteTimeout, routes, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// Dial connects from a socket created inside the namespace. addr must be an
// IP literal with a port ("198.18.0.10:80", "[2001:2::1]:80"): names are
// refused because the resolver would run on other threads, outside the
// namespace. network is tcp, tcp4, tcp6, udp, udp4 or udp6.
func (n *Netns) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if err := checkInetAddr(network, addr, false); err != nil {
		return nil, fmt.Errorf("dial %s %s in netns %s: %w", network, addr, n.name, err)
	}
	var c net.Conn
	err := n.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Listen opens a stream listener inside the namespace. addr is an IP literal
// (or empty host) with a port; see [Netns.Dial].
func (n *Netns) Listen(network, addr string) (net.Listener, error) {
	if err := checkInetAddr(network, addr, true); err != nil {
		return nil, fmt.Errorf("listen %s %s in netns %s: %w", network, addr, n.name, err)
	}
	var l net.Listener
	err := n.Do(func() error {
		var lc net.ListenConfig
		var err error
		l, err = lc.Listen(context.Background(), network, addr)
		return err
	})
	return l, err
}

// ListenPacket opens a packet socket inside the namespace. addr is an IP
// literal (or empty host) with a port; see [Netns.Dial].
func (n *Netns) ListenPacket(network, addr string) (net.PacketConn, error) {
	if err := checkInetAddr(network, addr, true); err != nil {
		return nil, fmt.Errorf("listen %s %s in netns %s: %w", network, addr, n.name, err)
	}
	var pc net.PacketConn
	err := n.Do(func() error {
		var lc net.ListenConfig
		var err error
		pc, err = lc.ListenPacket(context.Background(), network, addr)
		return err
	})
	return pc, err
}

// checkInetAddr accepts TCP/UDP networks and host:port with a literal IP
// host (or an empty host when emptyOK), so that no name lookup happens.
func checkInetAddr(network, addr string, emptyOK bool) error {
	switch network {
	case "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6":
	default:
		return fmt.Errorf("network %q: only tcp and udp are supported", network)
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "" {
		if emptyOK {
			return nil
		}
		return errors.New("empty host: give an IP literal")
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return fmt.Errorf("host %q is not an IP literal (names are not resolved inside a netns)", host)
	}
	return nil
}

// checkPrefix refuses name prefixes that could escape their directory.
func checkPrefix(prefix string) error {
	if prefix == "" || strings.ContainsAny(prefix, "/\x00") || strings.HasPrefix(prefix, ".") || len(prefix) > 200 {
		return fmt.Errorf("invalid name prefix %q", prefix)
	}
	return nil
}
