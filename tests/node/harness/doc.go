// Package harness brings up a real single-node Kubernetes cluster for
// socklb's node tests: the control plane of package cluster (etcd,
// kube-apiserver, kube-controller-manager with the node's controllers)
// and kube-scheduler, then containerd, runc, the CNI bridge and kubelet,
// with real pods in their own network namespaces and cgroups.
//
// The machine is shared, so the node lives in namespaces of its own and
// touches nothing of the host's:
//
//   - Network: the cluster's private network namespace (cluster.Cluster.NS,
//     only lo), with a bridge (BridgeName, DefaultBridgeCIDR) whose
//     address is the node IP. Pod IPs and ClusterIPs exist only there;
//     nothing has a route out.
//   - Mount, PID, UTS, IPC: a holder process (unshare, pause as PID 1)
//     makes them; inside, / is made rshared (the mounts stay inside: the
//     namespace was made with private propagation), /run, /var/lib and
//     /var/log are tmpfs mounts of the node's own (containerd's fixed
//     /run/containerd/s, /var/lib/cni, /var/lib/kubelet, /var/log/pods
//     never reach the host), /sys/fs/bpf is a bpffs of its own, and files
//     holding the values kubelet wants are bind-mounted over the
//     /proc/sys entries it checks (protectKernelDefaults: it never writes
//     a host sysctl). kubelet and containerd run there (nsenter by the
//     holder's PID, [Node.Command]); hostNetwork and hostPID pods share
//     these private namespaces.
//   - Cgroups: kubelet's cgroupRoot is /socklb-node-<suffix>, made in
//     every hierarchy before kubelet starts (cpuset with the root's cpus
//     and mems); pods run below it, never below the machine's root.
//     kubelet's own cgroups (kubeletCgroups, systemCgroups) stay unset, so
//     it never moves a host process.
//   - containerd uses its own root, state and socket paths inside the
//     node's tmpfs mounts, never the default ones.
//
// Everything is removed in t.Cleanup, also when the test fails: kubelet and
// containerd stop, the node's PID 1 is killed (which kills every process
// left in the node: shims and pods), the cgroup trees are removed
// depth-first in every hierarchy, the namespaces go with their last
// process, and the control plane and the network namespace are removed by
// package cluster. [Footprint.Leftovers] checks that nothing is left.
//
// Images are never pulled: the sandbox image is made from the pause
// binary (Kubernetes' build/pause/linux/pause.c, compiled static and
// cached by package nodebuild) and imported with ctr;
// [Node.ImportBinaryImage] does the same for other static binaries
// ([BuildImage]), [Node.ImportImage] for an archive. Which programs run is
// [Binaries]'s business.
//
// The node's smoke test needs root and is behind the nodee2e build tag:
//
//	go test -tags nodee2e -count=1 -v ./tests/node/harness/
package harness
