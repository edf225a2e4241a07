package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/socklb/socklb/internal/sandbox"
	"github.com/socklb/socklb/tests/e2e/cluster"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// DefaultBridgeCIDR is the node bridge's address and the pod subnet: the
// node IP is 198.18.0.1, pods get 198.18.0.2 and up. It is from the
// benchmarking range (RFC 2544), never routable, and lies outside the
// cluster's Service ranges (cluster.ServiceCIDR).
var DefaultBridgeCIDR = netip.MustParsePrefix("198.18.0.1/16")

// BridgeName is the node's bridge, in the node's network namespace.
const BridgeName = "socklb0"

// cniConfName is the pod network's file in the node's CNI directory.
const cniConfName = "10-socklb-node.conflist"

// nodeControllers are the controllers the node's controller manager runs
// besides the cluster package's EndpointSlice and garbage collector ones
// and its service account ones (cluster.Options.ServiceAccounts): the
// node-lifecycle controller removes the not-ready taint kubelet registers
// with (pods stay Pending without it), the others run what users apply.
var nodeControllers = []string{
	"node-lifecycle-controller",
	"daemonset-controller",
	"deployment-controller",
	"replicaset-controller",
	"namespace-controller",
}

const (
	startTimeout   = 30 * time.Second // each process, containerd's socket
	commandTimeout = 2 * time.Minute  // Node.Run
	stopGrace      = 10 * time.Second // SIGTERM → SIGKILL
	defaultReady   = 2 * time.Minute
	logTailBytes   = 96 << 10
)

// Options change the node [Start] brings up. Set $SOCKLB_NODE_LOGS to a
// directory to keep every node's logs and configuration files there
// (in a subdirectory named after the node) after teardown.
// The zero value is a node
// with the binaries found as [Binaries] says.
type Options struct {
	// Cluster is the control plane's configuration. Start always sets
	// ServiceAccounts, runs a controller manager, adds the node's
	// controllers (node-lifecycle, daemonset, deployment, replicaset,
	// namespace) to ControllerManagerArgs and makes the API server reach
	// the kubelet by the node's InternalIP (APIServerArgs).
	Cluster cluster.Options
	// Binaries; empty fields are found as the type's doc says.
	Binaries Binaries
	// BridgeCIDR is the bridge's address (the node IP) with the pod
	// subnet's length; the zero value means DefaultBridgeCIDR.
	BridgeCIDR netip.Prefix
	// ClusterDNS is kubelet's clusterDNS (the kube-dns ClusterIP); empty
	// means pods get no nameserver.
	ClusterDNS []string
	// Images are image archives (e.g. `make image`'s) imported into the
	// node's containerd before kubelet starts; [Node.ImportImage] imports
	// more later.
	Images []string
	// KubeletArgs are appended to kubelet's flags.
	KubeletArgs []string
	// ReadyTimeout bounds the wait for the node to be Ready once kubelet
	// runs; 0 means 2 minutes.
	ReadyTimeout time.Duration
}

// Node is a running single-node cluster. Its fields are read-only.
type Node struct {
	// Cluster is the control plane (etcd, kube-apiserver,
	// kube-controller-manager); kube-scheduler runs beside it. They run
	// in the node's network namespace, Cluster.NS, but in the host's
	// mount and PID namespaces.
	*cluster.Cluster
	// Name is the Node object's name and the node's hostname.
	Name string
	// IP is the node IP: the bridge's address in Cluster.NS.
	IP netip.Addr
	// APIServer is the API server's address for pods and hostNetwork
	// agents: the node IP and cluster.APIServerPort. It is the
	// default/kubernetes Service's endpoint.
	APIServer netip.AddrPort
	// PodCIDR is the subnet pods get their addresses from.
	PodCIDR netip.Prefix
	// CgroupRoot is kubelet's cgroupRoot, "/socklb-node-<suffix>"; it
	// exists in every cgroup hierarchy (see CgroupDirs). Pods run below
	// it; on a hybrid host socklb attaches to
	// /sys/fs/cgroup/unified/<CgroupRoot>.
	CgroupRoot string
	// CgroupDirs are CgroupRoot's directories, one per hierarchy.
	CgroupDirs []string
	// Cgroup2Mount is the host's cgroup2 mount (/sys/fs/cgroup/unified on
	// a hybrid host, /sys/fs/cgroup on a cgroup2-only one) and
	// Cgroup2Dir is CgroupRoot in it: the directory socklb attaches to,
	// where every pod of the node is below.
	Cgroup2Mount, Cgroup2Dir string
	// Dir holds the node's configuration files and logs on the host.
	Dir string
	// ContainerdSocket is containerd's socket inside the node's mount
	// namespace (use Run or Command to reach it).
	ContainerdSocket string
	// Binaries are the programs the node runs.
	Binaries Binaries
	// ContainerdVersion is what `containerd --version` says, e.g. "v2.3.7".
	ContainerdVersion string
	// Timings of Start.
	Timings Timings

	mu         sync.Mutex
	footprints []*Footprint // to stamp when teardown begins

	cfg       nodeConfig
	holder    *proc
	procs     []*proc
	logs      []string
	sysctls   map[string]string // the host's kernel defaults at start
	nsInodes  map[string]uint64
	netnsPath string
}

// Timings are how long Start's steps took.
type Timings struct {
	Binaries     time.Duration // finding (or building) the programs
	ControlPlane time.Duration // etcd, kube-apiserver, kube-controller-manager
	Containerd   time.Duration // namespaces, containerd up, images imported
	NodeReady    time.Duration // kubelet started → Node Ready without taints
	Total        time.Duration // Start's call → node Ready
}

// Start brings up a node and returns when its Node object is Ready and no
// longer carries the not-ready taint. Everything it creates is removed in
// t.Cleanup, also when the test fails: kubelet and containerd get SIGTERM,
// then the node's PID 1 is killed, which kills every process left in the
// node (shims, pods); then the cgroup trees are removed depth-first in
// every hierarchy and the control plane and the network namespace go. The
// node's mounts live only in its mount namespace and go with it.
func Start(t testing.TB, opts Options) *Node {
	t.Helper()
	sandbox.RequirePrivileges(t)
	launch := time.Now()
	n := &Node{Name: "socklb-node-" + randomHex(5), sysctls: map[string]string{}}
	n.CgroupRoot = "/" + n.Name
	for _, k := range kernelDefaults {
		v, err := os.ReadFile("/proc/sys/" + k.path)
		if err != nil {
			t.Fatalf("read host sysctl %s: %v", k.path, err)
		}
		n.sysctls[k.path] = strings.TrimSpace(string(v))
	}
	hs, err := cgroupHierarchies()
	if err != nil {
		t.Fatalf("cgroup hierarchies: %v", err)
	}
	if missing := missingKubeletHierarchies(hs); len(missing) > 0 {
		t.Fatalf("kubelet needs cgroup v1 hierarchies %v, which this host does not mount", missing)
	}
	if n.Binaries, err = opts.Binaries.resolve(logWriter{t}); err != nil {
		t.Fatal(err)
	}
	n.Timings.Binaries = time.Since(launch)

	bridge := opts.BridgeCIDR
	if !bridge.IsValid() {
		bridge = DefaultBridgeCIDR
	}
	if !bridge.Addr().Is4() || bridge.Bits() > 30 || bridge.Addr() == bridge.Masked().Addr() {
		t.Fatalf("bridge CIDR %s: want an IPv4 host address in a subnet of /30 or larger", bridge)
	}
	n.IP, n.PodCIDR = bridge.Addr(), bridge.Masked()
	n.APIServer = netip.AddrPortFrom(n.IP, cluster.APIServerPort)

	cpStart := time.Now()
	copts := opts.Cluster
	copts.ServiceAccounts = true
	copts.WithoutControllerManager = false
	// The API server reaches the kubelet (logs, exec, port-forward) at
	// the node IP; by default it would first look the node's name up in
	// the host's DNS, from inside the network namespace.
	//
	// Pods reach the API server at the node IP: it listens on every
	// address of the private network namespace (lo and, once it exists,
	// the bridge), advertises the node IP, and its lease reconciler
	// keeps default/kubernetes's endpoint there, so the kubernetes
	// Service works for pods once socklb serves it. Where nothing serves
	// ClusterIPs yet (socklb's own first start), the node IP is the real
	// address (APIServer).
	copts.APIServerIPs = append([]netip.Addr{n.IP}, copts.APIServerIPs...)
	copts.APIServerArgs = append([]string{
		"--kubelet-preferred-address-types=InternalIP",
		"--bind-address=0.0.0.0",
		"--advertise-address=" + n.IP.String(),
		"--endpoint-reconciler-type=lease",
	}, copts.APIServerArgs...)
	copts.ControllerManagerArgs = append([]string{"--controllers=" + strings.Join(nodeControllers, ",")}, copts.ControllerManagerArgs...)
	n.Cluster = cluster.StartWith(t, copts)
	n.Timings.ControlPlane = time.Since(cpStart)
	n.netnsPath = n.NS.Path()

	rtStart := time.Now()
	n.Dir = t.TempDir()
	n.ContainerdSocket = containerdSocket
	n.cfg = nodeConfig{
		name:       n.Name,
		dir:        n.Dir,
		cgroupRoot: n.CgroupRoot,
		bridge:     BridgeName,
		bridgeCIDR: bridge,
		pauseImage: PauseImage,
		runc:       n.Binaries.Runc,
		cniDir:     n.Binaries.CNIDir,
		clusterDNS: opts.ClusterDNS,
	}
	// Cleanups run last-in first-out: the logs are printed after every
	// process of the node has stopped.
	t.Cleanup(func() {
		if t.Failed() {
			n.dumpLogs(t)
		}
		if dir := os.Getenv("SOCKLB_NODE_LOGS"); dir != "" {
			if err := n.copyLogs(filepath.Join(dir, n.Name)); err != nil {
				t.Errorf("copy the node's logs: %v", err)
			}
		}
	})
	for _, h := range hs {
		if h.v2 {
			n.Cgroup2Mount, n.Cgroup2Dir = h.mount, filepath.Join(h.mount, n.CgroupRoot)
		}
	}
	if n.Cgroup2Mount == "" {
		t.Fatal("this host mounts no cgroup2 hierarchy: socklb attaches its programs to a cgroup2 directory")
	}
	if n.CgroupDirs, err = createCgroupRoot(hs, n.Name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := removeCgroupDirs(n.CgroupDirs, 15*time.Second); err != nil {
			t.Errorf("node teardown: %v", err)
		}
	})
	if err := n.writeFiles(); err != nil {
		t.Fatal(err)
	}
	if n.ContainerdVersion, err = n.cfg.writeContainerdConfig(t.Context(), n.Binaries.Containerd); err != nil {
		t.Fatal(err)
	}
	if err := n.NS.Do(func() error { return addBridge(bridge) }); err != nil {
		t.Fatalf("node bridge: %v", err)
	}
	pause := n.Binaries.Pause
	pauseArchive := filepath.Join(n.Dir, "pause-image.tar")
	img, err := BuildImage(pauseImageSpec(pause))
	if err != nil {
		t.Fatalf("pause image: %v", err)
	}
	if err := WriteImage(pauseArchive, img, PauseImage); err != nil {
		t.Fatalf("pause image: %v", err)
	}

	n.startHolder(t, pause)
	if out, err := n.Output(t.Context(), "/bin/sh", "-c", n.cfg.setupScript()); err != nil {
		t.Fatalf("node setup: %v\n%s", err, out)
	}
	containerd := n.startComponent(t, "containerd", n.Binaries.Containerd, "--config", n.cfg.containerdConfig())
	if err := n.waitFor("containerd's socket", startTimeout, func(ctx context.Context) error {
		out, err := n.Output(ctx, n.Binaries.Ctr, "--address", containerdSocket, "version")
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	}, containerd); err != nil {
		t.Fatal(err)
	}
	for _, a := range append([]string{pauseArchive}, opts.Images...) {
		n.ImportImage(t, a)
	}
	n.Timings.Containerd = time.Since(rtStart)

	n.startScheduler(t)
	kubeletStart := time.Now()
	kubelet := n.startComponent(t, "kubelet", n.Binaries.Kubelet, append(n.cfg.kubeletArgs(n.Kubeconfig), opts.KubeletArgs...)...)
	ready := opts.ReadyTimeout
	if ready == 0 {
		ready = defaultReady
	}
	if err := n.waitFor("node "+n.Name+" Ready without the not-ready taint", ready, n.checkReady, containerd, kubelet); err != nil {
		t.Fatal(err)
	}
	n.Timings.NodeReady = time.Since(kubeletStart)
	// Runs first of the node's cleanups: teardown begins.
	t.Cleanup(func() {
		now := BootTicks()
		n.mu.Lock()
		defer n.mu.Unlock()
		for _, f := range n.footprints {
			f.Before = now
		}
	})
	n.Timings.Total = time.Since(launch)
	t.Logf("node %s (containerd %s) Ready: %v after Start (binaries %v, control plane %v, namespaces+containerd+images %v, kubelet → Ready %v)",
		n.Name, n.ContainerdVersion, n.Timings.Total.Round(time.Millisecond), n.Timings.Binaries.Round(time.Millisecond),
		n.Timings.ControlPlane.Round(time.Millisecond), n.Timings.Containerd.Round(time.Millisecond),
		n.Timings.NodeReady.Round(time.Millisecond))
	return n
}

// writeFiles writes the configuration files and makes the node's
// directories.
func (n *Node) writeFiles() error {
	c := n.cfg
	for _, d := range []string{c.manifestsDir(), c.podLogsDir(), c.volumePluginDir(), c.cniConfDir(), filepath.Join(n.Dir, "sysctl"), filepath.Join(n.Dir, "tmp")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	for _, k := range kernelDefaults {
		if err := os.WriteFile(c.sysctlFile(k.path), []byte(k.value+"\n"), 0o444); err != nil {
			return err
		}
	}
	cni, err := c.cniConflist()
	if err != nil {
		return err
	}
	kubelet, err := c.kubeletJSON()
	if err != nil {
		return err
	}
	for path, data := range map[string][]byte{
		filepath.Join(c.cniConfDir(), cniConfName): cni,
		c.kubeletConfig():                          kubelet,
	} {
		if err := os.WriteFile(path, data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// addBridge adds the node's bridge with its address and sets it up; it
// runs inside the node's network namespace. The CNI bridge plugin finds
// it and attaches the pods' veths; kubelet wants the node IP on a local
// interface before the first pod exists.
func addBridge(p netip.Prefix) error {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer h.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: BridgeName}}
	if err := h.LinkAdd(br); err != nil {
		return fmt.Errorf("add bridge %s: %w", BridgeName, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}
	if err := h.AddrAdd(br, addr); err != nil {
		return fmt.Errorf("bridge %s: add %s: %w", BridgeName, p, err)
	}
	if err := h.LinkSetUp(br); err != nil {
		return fmt.Errorf("bridge %s: set up: %w", BridgeName, err)
	}
	return nil
}

// startHolder starts the process that holds the node's namespaces:
// unshare makes private mount (private propagation, /proc of its own),
// PID, UTS and IPC namespaces inside Cluster.NS and forks pause as their
// PID 1, which reaps orphans. --kill-child and the parent-death signal
// make the whole node die with the test process, whatever happens; its
// cleanup kills PID 1, which takes every process of the node with it.
func (n *Node) startHolder(t testing.TB, pause string) {
	t.Helper()
	f, err := n.openLog("holder")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("unshare", "--mount", "--pid", "--uts", "--ipc", "--fork",
		"--mount-proc", "--propagation", "private", "--kill-child", pause)
	cmd.Env = n.env()
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = f, f
	n.holder, err = startProc("node holder", cmd, func() error { return n.NS.Do(cmd.Start) }, pause, startTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// pause, the node's PID 1, exits on SIGTERM, and the kernel then
		// kills every process in its PID namespace and the namespaces
		// below it (the pods'); unshare reaps it, and exits, only after
		// all of them are gone. SIGKILL follows if it has not within 30 s.
		if err := n.holder.stop(unix.SIGTERM, 30*time.Second); err != nil {
			t.Errorf("node teardown: %v", err)
		}
	})
	n.nsInodes = map[string]uint64{}
	for _, kind := range namespaces {
		ino, err := nsInode(n.holder.inner, kind)
		if err != nil {
			t.Fatalf("node holder: %v", err)
		}
		self, err := nsInode(os.Getpid(), kind)
		if err != nil {
			t.Fatal(err)
		}
		if kind != "net" && ino == self {
			t.Fatalf("node holder shares the test's %s namespace", kind)
		}
		n.nsInodes[kind] = ino
	}
	// For a test that has to find the node's remains after this process
	// is gone (see the package's failure test).
	t.Logf("node footprint: %s", n.Footprint())
}

// checkReady is nil once the Node is Ready and has no not-ready or
// unreachable taint left.
func (n *Node) checkReady(ctx context.Context) error {
	node, err := n.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	ready := false
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			if c.Status != corev1.ConditionTrue {
				return fmt.Errorf("condition Ready is %s: %s: %s", c.Status, c.Reason, c.Message)
			}
			ready = true
		}
	}
	if !ready {
		return errors.New("no Ready condition yet")
	}
	for _, taint := range node.Spec.Taints {
		if taint.Key == corev1.TaintNodeNotReady || taint.Key == corev1.TaintNodeUnreachable {
			return fmt.Errorf("still tainted %s:%s", taint.Key, taint.Effect)
		}
	}
	return nil
}

// waitFor polls check every 100 ms until it returns nil, for at most
// timeout; it gives up at once when a watched process exits.
func (n *Node) waitFor(what string, timeout time.Duration, check func(context.Context) error, watch ...*proc) error {
	start := time.Now()
	var last error
	for {
		for _, p := range watch {
			if p.exited() {
				return fmt.Errorf("waiting for %s: %s exited (%v; its log is printed below)", what, p.name, p.waitErr)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		last = check(ctx)
		cancel()
		if last == nil {
			return nil
		}
		if time.Since(start) > timeout {
			return fmt.Errorf("%s: not after %v: %v", what, time.Since(start).Round(time.Millisecond), last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b) // never fails (crypto/rand, Go ≥ 1.24)
	return hex.EncodeToString(b)
}
