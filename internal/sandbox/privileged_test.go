package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Test addresses: 198.18.0.0/15 (RFC 2544 benchmarking) and, for IPv6, its
// RFC 5180 counterpart 2001:2::/48. They only ever exist on lo inside the
// tests' own namespaces.
var (
	podA   = netip.MustParseAddr("198.18.0.10")
	podB   = netip.MustParseAddr("198.18.0.11")
	podA6  = netip.MustParseAddr("2001:2::10")
	podErr = netip.MustParseAddr("198.18.0.99")
)

// hostNetns is the network namespace the test binary started in, read
// during package initialisation, which runs on the main thread.
var hostNetns = func() uint64 {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		panic(err)
	}
	return st.Ino
}()

func inode(t testing.TB, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	return st.Ino
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// mountedAt reports whether path (canonicalised through its parent, which
// must exist: /var/run → /run) is a mount point.
func mountedAt(t testing.TB, path string) bool {
	t.Helper()
	parent, err := filepath.EvalSymlinks(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(parent, filepath.Base(path))
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(data)) {
		if f := strings.Fields(line); len(f) > 4 && UnescapeMount(f[4]) == dir {
			return true
		}
	}
	return false
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestPrivilegedNetns(t *testing.T) {
	RequirePrivileges(t)
	var n *Netns
	t.Run("create", func(t *testing.T) {
		n = NewNetns(t)
		if !strings.HasPrefix(n.Name(), "socklb-t-") || n.Path() != "/var/run/netns/"+n.Name() {
			t.Fatalf("name %q path %q", n.Name(), n.Path())
		}
		// Reachable the way operators look: /var/run/netns, ip netns, nsenter.
		var st unix.Statfs_t
		if err := unix.Statfs("/var/run/netns/"+n.Name(), &st); err != nil || st.Type != unix.NSFS_MAGIC {
			t.Fatalf("/var/run/netns/%s is not an nsfs bind mount (type %#x, %v)", n.Name(), st.Type, err)
		}
		if !mountedAt(t, n.Path()) {
			t.Errorf("%s is not a mount point", n.Path())
		}
		if inode(t, n.Path()) == hostNetns {
			t.Fatal("netns is the host's")
		}
		if out := run(t, "ip", "netns", "list"); !strings.Contains(out, n.Name()) {
			t.Errorf("ip netns list does not show %s:\n%s", n.Name(), out)
		}
		out := run(t, "nsenter", "--net="+n.Path(), "ip", "-brief", "addr")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 1 || !strings.HasPrefix(lines[0], "lo ") || !strings.Contains(lines[0], "127.0.0.1/8") {
			t.Errorf("ip -brief addr in netns: want only lo with 127.0.0.1/8, got:\n%s", out)
		}
		if out := run(t, "nsenter", "--net="+n.Path(), "ip", "-o", "link", "show", "lo"); !strings.Contains(out, ",UP,") {
			t.Errorf("lo is not up in netns:\n%s", out)
		}

		// Only lo, and every route goes to lo: nothing can leave the machine.
		err := n.Do(func() error {
			links, err := netlink.LinkList()
			if err != nil {
				return err
			}
			if len(links) != 1 || links[0].Attrs().Name != "lo" {
				return fmt.Errorf("links in netns: %v", links)
			}
			routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
			if err != nil {
				return err
			}
			for _, r := range routes {
				if r.LinkIndex != links[0].Attrs().Index || r.Gw != nil {
					return fmt.Errorf("route not to lo: %v", r)
				}
			}
			if len(routes) == 0 {
				return errors.New("no routes at all: lo is not up")
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	if n == nil {
		t.FailNow()
	}
	if exists(n.Path()) {
		t.Errorf("%s still exists after cleanup", n.Path())
	}
	if mountedAt(t, n.Path()) {
		t.Errorf("%s still mounted after cleanup", n.Path())
	}
	if out := run(t, "ip", "netns", "list"); strings.Contains(out, n.Name()) {
		t.Errorf("ip netns list still shows %s:\n%s", n.Name(), out)
	}
}

func TestPrivilegedCreateNetns(t *testing.T) {
	RequirePrivileges(t)
	n, cleanup, err := CreateNetns("socklb-demo-")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(n.Name(), "socklb-demo-") || !exists(n.Path()) {
		t.Fatalf("created %q at %s", n.Name(), n.Path())
	}
	// Sockets keep the namespace alive after its name is gone.
	l, err := n.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := cleanup(); err != nil {
		t.Fatal(err)
	}
	if err := cleanup(); err != nil {
		t.Errorf("second cleanup: %v", err)
	}
	if exists(n.Path()) {
		t.Errorf("%s still exists after cleanup", n.Path())
	}
	if _, _, err := CreateNetns("../etc/x"); err == nil {
		t.Error("CreateNetns accepted a prefix with a slash")
	}
}

// TestPrivilegedNetnsDoRestoresThreads checks that after many Do calls no
// goroutine runs on a thread left in a test namespace.
func TestPrivilegedNetnsDoRestoresThreads(t *testing.T) {
	RequirePrivileges(t)
	host := hostNetns
	n := NewNetns(t)
	for range 10 {
		NewNetns(t)
	}
	nsIno := inode(t, n.Path())
	for range 50 {
		err := n.Do(func() error {
			if got := inode(t, "/proc/thread-self/ns/net"); got != nsIno {
				return fmt.Errorf("inside Do: thread netns %d, want %d", got, nsIno)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := n.Do(func() error { return io.ErrUnexpectedEOF }); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("Do returned %v, want fn's error", err)
	}
	if err := n.Do(func() error { runtime.Goexit(); return nil }); err == nil {
		t.Error("Do returned nil after fn called runtime.Goexit")
	}
	func() {
		defer func() {
			if recover() != "boom" {
				t.Error("panic in fn was not re-raised in the caller")
			}
		}()
		n.Do(func() error { panic("boom") })
	}()

	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 64 {
		wg.Go(func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			var st unix.Stat_t
			if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
				errs <- err
			} else if st.Ino != host {
				errs <- fmt.Errorf("thread %d is in netns %d, not the host's %d", unix.Gettid(), st.Ino, host)
			}
			time.Sleep(5 * time.Millisecond) // keep the thread busy so others get new ones
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// /proc/self is the main thread: a goroutine that exits locked on it
	// parks it for good, in whatever namespace it was left.
	if got := inode(t, "/proc/self/ns/net"); got != host {
		t.Errorf("main thread is in netns %d, not the host's %d", got, host)
	}
}

func TestPrivilegedNameServers(t *testing.T) {
	RequirePrivileges(t)
	n := NewNetns(t)
	for _, a := range []netip.Addr{podA, podB, podA6} {
		if err := n.AddAddr(netip.PrefixFrom(a, a.BitLen())); err != nil {
			t.Fatal(err)
		}
	}
	tcpA := StartTCPNameServer(t, n, netip.AddrPortFrom(podA, 8080), "pod-a")
	tcpB := StartTCPNameServer(t, n, netip.AddrPortFrom(podB, 0), "pod-b")
	tcp6 := StartTCPNameServer(t, n, netip.AddrPortFrom(podA6, 8080), "pod-a6")
	udpA := StartUDPNameServer(t, n, netip.AddrPortFrom(podA, 5353), "pod-a-udp")
	udp6 := StartUDPNameServer(t, n, netip.AddrPortFrom(podA6, 5353), "pod-a6-udp")
	if tcpB.Addr().Addr() != podB || tcpB.Addr().Port() == 0 {
		t.Fatalf("port 0 server reports %v", tcpB.Addr())
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	askTCP := func(s *NameServer, send string) string {
		t.Helper()
		c, err := n.Dial(ctx, "tcp", s.Addr().String())
		if err != nil {
			t.Fatalf("dial %v: %v", s, err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if send != "" {
			io.WriteString(c, send)
		}
		b, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("read from %v: %v", s, err)
		}
		return string(b)
	}
	askUDP := func(s *NameServer) string {
		t.Helper()
		c, err := n.Dial(ctx, "udp", s.Addr().String())
		if err != nil {
			t.Fatalf("dial %v: %v", s, err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "who?"); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 100)
		m, err := c.Read(buf)
		if err != nil {
			t.Fatalf("read from %v: %v", s, err)
		}
		return string(buf[:m])
	}

	for i := range 3 {
		if got := askTCP(tcpA, ""); got != "pod-a\n" {
			t.Errorf("TCP %v answered %q", tcpA, got)
		}
		if got := askTCP(tcpB, strings.Repeat("request ", i*1000)); got != "pod-b\n" {
			t.Errorf("TCP %v (client sent data) answered %q", tcpB, got)
		}
		if got := askUDP(udpA); got != "pod-a-udp" {
			t.Errorf("UDP %v answered %q", udpA, got)
		}
	}
	if got := askTCP(tcp6, ""); got != "pod-a6\n" {
		t.Errorf("TCP %v answered %q", tcp6, got)
	}
	if got := askUDP(udp6); got != "pod-a6-udp" {
		t.Errorf("UDP %v answered %q", udp6, got)
	}
	for s, want := range map[*NameServer]int64{tcpA: 3, tcpB: 3, udpA: 3, tcp6: 1, udp6: 1} {
		if got := s.Count(); got != want {
			t.Errorf("%v served %d, want %d", s, got, want)
		}
	}

	// Names are refused: a resolver would run outside the namespace.
	if _, err := n.Dial(ctx, "tcp", "localhost:8080"); err == nil {
		t.Error("Dial accepted a host name")
	}
	// Nothing listens here: refused at once, inside the namespace.
	if _, err := n.Dial(ctx, "tcp", netip.AddrPortFrom(podErr, 1).String()); !errors.Is(err, unix.ENETUNREACH) && !errors.Is(err, unix.ECONNREFUSED) {
		t.Errorf("dial to an unassigned test address: %v, want ENETUNREACH or ECONNREFUSED", err)
	}

	// Close stops the server even with a client that never closes.
	idle, err := n.Dial(ctx, "tcp", tcpA.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	start := time.Now()
	if err := tcpA.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v with an idle client", d)
	}
	if _, err := n.Dial(ctx, "tcp", tcpA.Addr().String()); !errors.Is(err, unix.ECONNREFUSED) {
		t.Errorf("dial after Close: %v, want ECONNREFUSED", err)
	}
}

// TestPrivilegedIsolation proves that a pod address lives only in its
// namespace: neither the host nor another test namespace reaches it.
func TestPrivilegedIsolation(t *testing.T) {
	RequirePrivileges(t)
	n := NewNetns(t)
	if err := n.AddAddr(netip.PrefixFrom(podA, 32)); err != nil {
		t.Fatal(err)
	}
	srv := StartTCPNameServer(t, n, netip.AddrPortFrom(podA, 8080), "pod-a")

	// The host does not own the address...
	routes, err := netlink.RouteGet(podA.AsSlice())
	if err != nil {
		t.Fatalf("host route lookup for %v: %v", podA, err)
	}
	for _, r := range routes {
		if r.Type == unix.RTN_LOCAL {
			t.Fatalf("%v is a local address of the host namespace: %v", podA, r)
		}
	}
	// ...and cannot connect to it. SO_DONTROUTE keeps the connect off any
	// gateway, so no SYN can leave the machine (a plain connect would be
	// sent to the host's default route here). Only a directly connected
	// 198.18.0.0/15 network on the host could carry it, so then don't dial.
	direct := false
	for _, r := range routes {
		direct = direct || (r.Gw == nil && r.Type == unix.RTN_UNICAST)
	}
	if direct {
		t.Logf("host has a directly connected route to %v (%v): not dialing from the host", podA, routes)
	} else {
		d := net.Dialer{
			Timeout: 2 * time.Second,
			Control: func(_, _ string, c syscall.RawConn) error {
				var serr error
				if err := c.Control(func(fd uintptr) {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DONTROUTE, 1)
				}); err != nil {
					return err
				}
				return serr
			},
		}
		// A synchronous ENETUNREACH/EHOSTUNREACH means the route lookup
		// failed: nothing was sent.
		c, err := d.Dial("tcp", srv.Addr().String())
		if err == nil {
			c.Close()
			t.Fatalf("host namespace reached %v", srv)
		}
		if !errors.Is(err, unix.ENETUNREACH) && !errors.Is(err, unix.EHOSTUNREACH) {
			t.Errorf("dial from host: %v, want ENETUNREACH or EHOSTUNREACH", err)
		}
	}

	// Another test namespace has no route to it at all.
	other := NewNetns(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if c, err := other.Dial(ctx, "tcp", srv.Addr().String()); !errors.Is(err, unix.ENETUNREACH) {
		if c != nil {
			c.Close()
		}
		t.Errorf("dial from another netns: %v, want ENETUNREACH", err)
	}
	if srv.Count() != 0 {
		t.Errorf("server answered %d connections from outside its namespace", srv.Count())
	}
}

func TestPrivilegedCgroup(t *testing.T) {
	RequirePrivileges(t)
	mount, err := Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	before, err := procCgroup("self")
	if err != nil {
		t.Fatal(err)
	}
	var c *Cgroup
	t.Run("create", func(t *testing.T) {
		c = NewCgroup(t)
		if filepath.Dir(c.Path()) != mount || !strings.HasPrefix(filepath.Base(c.Path()), "socklb-test-") {
			t.Fatalf("cgroup %s is not a socklb-test- child of %s", c.Path(), mount)
		}
		if err := CheckChildCgroup(c.Path()); err != nil {
			t.Fatal(err)
		}
		restore, err := c.EnterSelf()
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := procCgroup("self"); got != c.Path() {
			t.Errorf("after EnterSelf /proc/self/cgroup says %s, want %s", got, c.Path())
		}
		procs, err := readProcs(c.Path())
		if err != nil || len(procs) != 1 || procs[0] != os.Getpid() {
			t.Errorf("cgroup.procs = %v, %v; want just %d", procs, err, os.Getpid())
		}
		if err := restore(); err != nil {
			t.Fatal(err)
		}
		if err := restore(); err != nil {
			t.Errorf("second restore: %v", err)
		}
		if got, _ := procCgroup("self"); got != before {
			t.Errorf("after restore /proc/self/cgroup says %s, want %s", got, before)
		}
		// Left inside on purpose: cleanup must move us out.
		if _, err := c.EnterSelf(); err != nil {
			t.Fatal(err)
		}
	})
	if c == nil {
		t.FailNow()
	}
	if got, _ := procCgroup("self"); got != before {
		t.Errorf("after cleanup /proc/self/cgroup says %s, want %s", got, before)
	}
	if exists(c.Path()) {
		t.Errorf("%s still exists after cleanup", c.Path())
	}
}

// TestPrivilegedCgroupRootGuard checks that nothing here will operate on a
// cgroup2 root.
func TestPrivilegedCgroupRootGuard(t *testing.T) {
	RequirePrivileges(t)
	mount, err := Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	child := NewCgroup(t)
	for _, p := range []string{mount, mount + "/", mount + "/.", child.Path() + "/..", filepath.Join(child.Path(), "..")} {
		if err := CheckChildCgroup(p); !errors.Is(err, ErrCgroupRoot) {
			t.Errorf("CheckChildCgroup(%q) = %v, want ErrCgroupRoot", p, err)
		}
	}
	// A symlink to the root is the root too.
	link := filepath.Join(t.TempDir(), "root")
	if err := os.Symlink(mount, link); err != nil {
		t.Fatal(err)
	}
	if err := CheckChildCgroup(link); !errors.Is(err, ErrCgroupRoot) {
		t.Errorf("CheckChildCgroup(symlink to root) = %v, want ErrCgroupRoot", err)
	}
	for _, p := range []string{"/tmp", "relative/path", "/sys/fs/cgroup/cpu", filepath.Join(mount, "does-not-exist")} {
		if err := CheckChildCgroup(p); err == nil {
			t.Errorf("CheckChildCgroup(%q) accepted a non-cgroup2 path", p)
		}
	}

	before, _ := procCgroup("self")
	root := &Cgroup{path: mount, origins: map[int]string{}}
	if _, err := root.EnterSelf(); !errors.Is(err, ErrCgroupRoot) {
		t.Errorf("EnterSelf on the root = %v, want ErrCgroupRoot", err)
	}
	if err := root.remove(); !errors.Is(err, ErrCgroupRoot) {
		t.Errorf("remove on the root = %v, want ErrCgroupRoot", err)
	}
	n := NewNetns(t)
	if _, err := StartProcessIn(exec.Command("true"), n, root); !errors.Is(err, ErrCgroupRoot) {
		t.Errorf("StartProcessIn in the root cgroup = %v, want ErrCgroupRoot", err)
	}
	if after, _ := procCgroup("self"); after != before {
		t.Errorf("process moved from %s to %s", before, after)
	}
	if !exists(filepath.Join(mount, "cgroup.procs")) {
		t.Fatal("cgroup2 root damaged")
	}
	if _, _, err := CreateCgroup("../escape-"); err == nil {
		t.Error("CreateCgroup accepted a prefix with ..")
	}
}

func TestPrivilegedStartProcess(t *testing.T) {
	RequirePrivileges(t)
	n := NewNetns(t)
	var (
		c   *Cgroup
		cmd *exec.Cmd
	)
	t.Run("run", func(t *testing.T) {
		c = NewCgroup(t)
		cmd = exec.Command("sleep", "600")
		StartProcess(t, cmd, n, c)
		pid := fmt.Sprint(cmd.Process.Pid)
		if got, want := inode(t, "/proc/"+pid+"/ns/net"), inode(t, n.Path()); got != want {
			t.Errorf("child netns inode %d, want %d", got, want)
		}
		if got, err := procCgroup(pid); err != nil || got != c.Path() {
			t.Errorf("child cgroup %s (%v), want %s", got, err, c.Path())
		}
		if got, _ := procCgroup("self"); got == c.Path() {
			t.Error("the test process itself moved into the cgroup")
		}

		// A short command whose output we wait for, in the same netns.
		var out bytes.Buffer
		ipCmd := exec.Command("ip", "-brief", "addr")
		ipCmd.Stdout = &out
		StartProcess(t, ipCmd, n, nil)
		if err := ipCmd.Wait(); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(out.String(), "lo ") || strings.Count(out.String(), "\n") != 1 {
			t.Errorf("ip -brief addr in netns:\n%s", out.String())
		}
	})
	if cmd == nil || cmd.ProcessState == nil {
		t.Fatal("process was not reaped by cleanup")
	}
	if ws := cmd.ProcessState.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("process ended with %v, want SIGKILL", cmd.ProcessState)
	}
	if exists(c.Path()) {
		t.Errorf("%s still exists after cleanup", c.Path())
	}
}

func TestPrivilegedBPFFS(t *testing.T) {
	RequirePrivileges(t)
	var dir string
	t.Run("mount", func(t *testing.T) {
		dir = MountBPFFS(t)
		if !mountedAt(t, dir) {
			t.Errorf("%s is not a mount point", dir)
		}
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err != nil {
			t.Fatal(err)
		}
		if st.Type != unix.BPF_FS_MAGIC {
			t.Fatalf("%s: statfs magic %#x, want BPF_FS_MAGIC %#x", dir, st.Type, unix.BPF_FS_MAGIC)
		}
		// Pins work, and a pin left behind does not stop cleanup.
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if err := m.Pin(filepath.Join(dir, "test_map")); err != nil {
			t.Fatal(err)
		}
	})
	if dir == "" {
		t.FailNow()
	}
	if mountedAt(t, dir) {
		t.Errorf("%s still mounted after cleanup", dir)
	}
	if exists(dir) {
		t.Errorf("%s still exists after cleanup", dir)
	}

	full := t.TempDir()
	if err := os.WriteFile(filepath.Join(full, "keep"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{full, "/sys/fs/bpf", filepath.Join(t.TempDir(), "missing")} {
		if cleanup, err := MountBPFFSAt(d); err == nil {
			cleanup()
			t.Errorf("MountBPFFSAt(%s) mounted", d)
		}
	}
}

const helperEnv = "SOCKLB_SANDBOX_FAILING_HELPER"

// TestFailingSandboxHelper is run by TestPrivilegedCleanupOnFailure in a
// child test binary: it builds one of everything, then fails. Run normally
// it does nothing.
func TestFailingSandboxHelper(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		return
	}
	n := NewNetns(t)
	if err := n.AddAddr(netip.PrefixFrom(podA, 32)); err != nil {
		t.Fatal(err)
	}
	StartTCPNameServer(t, n, netip.AddrPortFrom(podA, 8080), "pod-a")
	StartUDPNameServer(t, n, netip.AddrPortFrom(podA, 5353), "pod-a")
	c := NewCgroup(t)
	if _, err := c.EnterSelf(); err != nil { // never restored by the test
		t.Fatal(err)
	}
	dir := MountBPFFS(t)
	cmd := exec.Command("sleep", "600")
	StartProcess(t, cmd, n, c)
	fmt.Printf("SANDBOX netns=%s cgroup=%s bpffs=%s pid=%d\n", n.Path(), c.Path(), dir, cmd.Process.Pid)
	t.Fatal("failing on purpose")
}

// TestPrivilegedCleanupOnFailure proves that a failing test leaves nothing
// behind: netns, cgroup (with the test process and a child inside), bpffs
// mount and process are all gone after the failed test binary exits.
func TestPrivilegedCleanupOnFailure(t *testing.T) {
	RequirePrivileges(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestFailingSandboxHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	out, err := cmd.CombinedOutput()
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || !strings.Contains(string(out), "failing on purpose") {
		t.Fatalf("helper should have failed on purpose: %v\n%s", err, out)
	}
	var netnsPath, cgPath, bpffs string
	var pid int
	for line := range strings.Lines(string(out)) {
		if rest, ok := strings.CutPrefix(line, "SANDBOX "); ok {
			if _, err := fmt.Sscanf(rest, "netns=%s cgroup=%s bpffs=%s pid=%d", &netnsPath, &cgPath, &bpffs, &pid); err != nil {
				t.Fatalf("parse %q: %v", line, err)
			}
		}
	}
	if pid == 0 {
		t.Fatalf("helper printed no SANDBOX line:\n%s", out)
	}
	for _, p := range []string{netnsPath, cgPath, bpffs} {
		if exists(p) {
			t.Errorf("%s left behind by a failed test", p)
		}
	}
	if mountedAt(t, bpffs) || mountedAt(t, netnsPath) {
		t.Errorf("mounts left behind by a failed test")
	}
	if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && strings.HasPrefix(string(cmdline), "sleep\x00600") {
		t.Errorf("process %d left running by a failed test", pid)
	}
}
