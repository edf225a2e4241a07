package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// Paths inside the node's mount namespace. /run, /var/lib and /var/log
// there are tmpfs mounts of the node's own, so nothing under them ever
// reaches the host, and containerd's fixed paths (/run/containerd/s for
// shim sockets) and the CNI plugins' (/var/lib/cni) stay private.
const (
	containerdRoot   = "/var/lib/socklb-node/containerd"
	containerdState  = "/run/socklb-node/containerd"
	containerdSocket = "/run/socklb-node/containerd.sock"
	kubeletRootDir   = "/var/lib/kubelet"
)

// nodeConfig is what the configuration files are made from.
type nodeConfig struct {
	name       string       // node name and hostname
	dir        string       // the node's directory on the host (configs, logs)
	cgroupRoot string       // "/socklb-node-<suffix>"
	bridge     string       // bridge device name
	bridgeCIDR netip.Prefix // the bridge's address (the node IP) and the pod subnet
	pauseImage string
	runc       string
	cniDir     string
	clusterDNS []string
}

// kernelDefaults are the sysctls kubelet checks at start with
// protectKernelDefaults (setupKernelTunables), with the values it wants.
// The node bind-mounts a file holding each value over the /proc/sys entry
// in its own mount namespace, so kubelet finds them set and the host's
// values are never read or changed by it.
var kernelDefaults = []struct{ path, value string }{
	{"vm/overcommit_memory", "1"},
	{"vm/panic_on_oom", "0"},
	{"kernel/panic", "10"},
	{"kernel/panic_on_oops", "1"},
	{"kernel/keys/root_maxkeys", "1000000"},
	{"kernel/keys/root_maxbytes", "25000000"},
}

func (c nodeConfig) nodeIP() netip.Addr { return c.bridgeCIDR.Addr() }

func (c nodeConfig) manifestsDir() string     { return filepath.Join(c.dir, "manifests") }
func (c nodeConfig) podLogsDir() string       { return filepath.Join(c.dir, "pod-logs") }
func (c nodeConfig) volumePluginDir() string  { return filepath.Join(c.dir, "volume-plugins") }
func (c nodeConfig) cniConfDir() string       { return filepath.Join(c.dir, "cni") }
func (c nodeConfig) containerdConfig() string { return filepath.Join(c.dir, "containerd.toml") }
func (c nodeConfig) containerdV2Config() string {
	return filepath.Join(c.dir, "containerd-v2.toml")
}
func (c nodeConfig) kubeletConfig() string { return filepath.Join(c.dir, "kubelet.json") }

// containerdTOML is containerd's configuration in version 2, which
// containerd 1.6 reads and [writeContainerdConfig] migrates for 2.x: its
// own root, state, sockets and opt directory; no NRI; the CRI plugin with
// the locally made pause image,
// runc through the cgroupfs driver, restrict_oom_score_adj (root here has
// no CAP_SYS_RESOURCE: without it every sandbox fails with runc's
// misleading "can't get final child's PID from pipe: EOF"), no AppArmor
// profile loaded into the kernel, and the node's CNI configuration.
func (c nodeConfig) containerdTOML() string {
	q := strconv.Quote
	var b strings.Builder
	fmt.Fprintf(&b, `version = 2
root = %s
state = %s
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = %s

[ttrpc]
  address = %s

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = %s

[plugins."io.containerd.nri.v1.nri"]
  disable = true

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %s
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  BinaryName = %s
  SystemdCgroup = false

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = %s
  conf_dir = %s
  max_conf_num = 1
`,
		q(containerdRoot), q(containerdState),
		q(containerdSocket), q(containerdSocket+".ttrpc"),
		q(containerdRoot+"-opt"),
		q(c.pauseImage), q(c.runc),
		q(c.cniDir), q(c.cniConfDir()))
	return b.String()
}

// writeContainerdConfig writes containerdConfig for the containerd
// binary: version 2 as it is for containerd 1.x; for 2.x and later, what
// `containerd config migrate` makes of it (the binary's own version, so
// that it starts without a migration warning). It returns containerd's
// version.
func (c nodeConfig) writeContainerdConfig(ctx context.Context, containerd string) (string, error) {
	v2 := []byte(c.containerdTOML())
	if err := os.WriteFile(c.containerdV2Config(), v2, 0o644); err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, containerd, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", containerd, err)
	}
	version, major, err := parseContainerdVersion(string(out))
	if err != nil {
		return "", err
	}
	conf := v2
	if major >= 2 {
		cmd := exec.CommandContext(ctx, containerd, "--config", c.containerdV2Config(), "config", "migrate")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if conf, err = cmd.Output(); err != nil {
			return "", fmt.Errorf("containerd %s config migrate: %w: %s", version, err, stderr.String())
		}
		// A check that the migration kept what the node relies on.
		for _, want := range []string{"restrict_oom_score_adj = true", containerdSocket, c.pauseImage} {
			if !strings.Contains(string(conf), want) {
				return "", fmt.Errorf("containerd %s config migrate: the result lacks %q", version, want)
			}
		}
	}
	return version, os.WriteFile(c.containerdConfig(), conf, 0o644)
}

// parseContainerdVersion reads `containerd --version`: "containerd
// github.com/containerd/containerd/v2 v2.3.7 <commit>", or Debian's
// "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1".
func parseContainerdVersion(out string) (version string, major int, err error) {
	f := strings.Fields(out)
	if len(f) < 3 || f[0] != "containerd" {
		return "", 0, fmt.Errorf("containerd --version: unexpected %q", strings.TrimSpace(out))
	}
	version = f[2]
	digits := strings.TrimPrefix(version, "v")
	if i := strings.IndexFunc(digits, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		digits = digits[:i]
	}
	if major, err = strconv.Atoi(digits); err != nil {
		return "", 0, fmt.Errorf("containerd --version: no major version in %q", version)
	}
	return version, major, nil
}

// cniConflist is the pod network: the bridge plugin on the node's bridge
// (its address is the gateway and the node IP), host-local addresses from
// the bridge's subnet, a default route to the bridge. No masquerading:
// the node's network namespace has no way out, and nothing needs one.
func (c nodeConfig) cniConflist() ([]byte, error) {
	subnet := c.bridgeCIDR.Masked()
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "socklb-node",
		"plugins": []any{
			map[string]any{
				"type":        "bridge",
				"bridge":      c.bridge,
				"isGateway":   true,
				"ipMasq":      false,
				"hairpinMode": true,
				"ipam": map[string]any{
					"type": "host-local",
					"ranges": []any{[]any{map[string]any{
						"subnet":     subnet.String(),
						"gateway":    c.nodeIP().String(),
						"rangeStart": c.nodeIP().Next().String(),
					}}},
					"routes": []any{map[string]any{"dst": "0.0.0.0/0"}},
				},
			},
		},
	}
	return json.MarshalIndent(conf, "", "  ")
}

// kubeletJSON is the KubeletConfiguration (JSON, which kubelet reads as
// YAML). The fields that matter on this host:
//   - failCgroupV1 false, cgroupDriver cgroupfs, and the node's own
//     cgroupRoot (made beforehand in every hierarchy); kubeletCgroups and
//     systemCgroups stay empty, so kubelet never moves a host process;
//   - protectKernelDefaults: kubelet only checks the sysctls, never sets
//     them (the node shows it the values it wants, see kernelDefaults);
//   - makeIPTablesUtilChains false, resolvConf "" (pods never get the
//     host's nameservers), readOnlyPort 0;
//   - address = the bridge address (the node IP; kubelet refuses
//     loopback);
//   - staticPodPath, podLogsDir, volumePluginDir under the node's
//     directory, image GC thresholds 100/99 (an image made here can
//     never be pulled again) and eviction thresholds that a shared disk
//     does not trip.
//
// The API server reaches the kubelet (logs, exec) anonymously: the
// kubelet serves only inside the node's network namespace.
func (c nodeConfig) kubeletJSON() ([]byte, error) {
	conf := map[string]any{
		"kind":                        "KubeletConfiguration",
		"apiVersion":                  "kubelet.config.k8s.io/v1beta1",
		"failCgroupV1":                false,
		"cgroupDriver":                "cgroupfs",
		"cgroupRoot":                  c.cgroupRoot,
		"protectKernelDefaults":       true,
		"makeIPTablesUtilChains":      false,
		"resolvConf":                  "",
		"address":                     c.nodeIP().String(),
		"port":                        10250,
		"readOnlyPort":                0,
		"healthzBindAddress":          "127.0.0.1",
		"healthzPort":                 10248,
		"staticPodPath":               c.manifestsDir(),
		"podLogsDir":                  c.podLogsDir(),
		"volumePluginDir":             c.volumePluginDir(),
		"imageGCHighThresholdPercent": 100,
		"imageGCLowThresholdPercent":  99,
		"evictionHard": map[string]string{
			"memory.available":   "100Mi",
			"nodefs.available":   "1%",
			"nodefs.inodesFree":  "1%",
			"imagefs.available":  "1%",
			"imagefs.inodesFree": "1%",
		},
		"failSwapOn":               false,
		"containerRuntimeEndpoint": "unix://" + containerdSocket,
		"authentication": map[string]any{
			"anonymous": map[string]any{"enabled": true},
			"webhook":   map[string]any{"enabled": false},
		},
		"authorization":        map[string]any{"mode": "AlwaysAllow"},
		"clusterDomain":        "cluster.local",
		"shutdownGracePeriod":  "0s",
		"containerLogMaxSize":  "10Mi",
		"containerLogMaxFiles": 2,
	}
	if len(c.clusterDNS) > 0 {
		conf["clusterDNS"] = c.clusterDNS
	}
	return json.MarshalIndent(conf, "", "  ")
}

// kubeletArgs are kubelet's flags besides the configuration file.
func (c nodeConfig) kubeletArgs(kubeconfig string) []string {
	return []string{
		"--config=" + c.kubeletConfig(),
		"--kubeconfig=" + kubeconfig,
		"--hostname-override=" + c.name,
		"--node-ip=" + c.nodeIP().String(),
		"--root-dir=" + kubeletRootDir,
		"--cert-dir=" + kubeletRootDir + "/pki",
		"--v=2",
	}
}

// setupScript prepares the node's private mount, UTS namespaces once the
// holder runs: shared propagation inside (the DaemonSet mounts /sys/fs/bpf
// bidirectionally), tmpfs over /run, /var/lib and /var/log, a bpffs of its
// own, the kernel defaults, the hostname. Every mount is made inside the
// node's mount namespace, which was created with private propagation, so
// none of them reaches the host.
func (c nodeConfig) setupScript() string {
	var b strings.Builder
	b.WriteString("set -eu\n")
	b.WriteString("mount --make-rshared /\n")
	for _, d := range []string{"/run", "/var/lib", "/var/log"} {
		fmt.Fprintf(&b, "mount -t tmpfs -o mode=0755 socklb-node %s\n", d)
	}
	b.WriteString("mount -t bpf -o mode=0700 bpffs /sys/fs/bpf\n")
	// containerd 2.x always imports /etc/containerd/conf.d/*.toml: hide
	// the host's containerd configuration from the node's containerd.
	b.WriteString("if [ -d /etc/containerd ]; then mount -t tmpfs -o mode=0755 socklb-node /etc/containerd; fi\n")
	for _, k := range kernelDefaults {
		fmt.Fprintf(&b, "mount --bind %s /proc/sys/%s\n", shellQuote(c.sysctlFile(k.path)), k.path)
	}
	fmt.Fprintf(&b, "hostname %s\n", shellQuote(c.name))
	fmt.Fprintf(&b, "mkdir -p %s %s\n", containerdState, containerdRoot)
	return b.String()
}

// sysctlFile is the host file that holds a kernel default's value.
func (c nodeConfig) sysctlFile(path string) string {
	return filepath.Join(c.dir, "sysctl", strings.ReplaceAll(path, "/", "."))
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
