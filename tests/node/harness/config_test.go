package harness

import (
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// mountinfo of this project's hybrid hosts, plus a bind mount of a cgroup
// subtree and a second mount of one hierarchy, which must be skipped.
const hybridMountinfo = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset,clone_children
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:32 /sub /mnt/memsub rw,relatime - cgroup cgroup rw,memory
51 23 0:29 / /mnt/cpu\040again rw,relatime - cgroup cgroup rw,cpu
`

func TestParseCgroupMounts(t *testing.T) {
	hs, err := parseCgroupMounts(strings.NewReader(hybridMountinfo))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, h := range hs {
		got = append(got, h.mount+"="+strings.Join(h.controllers, ","))
	}
	want := []string{
		"/sys/fs/cgroup/cpu=cpu", "/sys/fs/cgroup/cpuacct=cpuacct", "/sys/fs/cgroup/cpuset=cpuset",
		"/sys/fs/cgroup/memory=memory", "/sys/fs/cgroup/devices=devices", "/sys/fs/cgroup/pids=pids",
		"/sys/fs/cgroup/systemd=systemd", "/sys/fs/cgroup/unified=",
	}
	if !slices.Equal(got, want) {
		t.Errorf("hierarchies\n got %v\nwant %v", got, want)
	}
	if !hs[len(hs)-1].v2 {
		t.Errorf("unified is not cgroup2")
	}
	if m := missingKubeletHierarchies(hs); len(m) != 0 {
		t.Errorf("missing %v on a full hybrid host", m)
	}
	if m := missingKubeletHierarchies(hs[1:]); !slices.Equal(m, []string{"cpu"}) {
		t.Errorf("missing %v without the cpu hierarchy, want [cpu]", m)
	}
	if m := missingKubeletHierarchies(hs[len(hs)-1:]); m != nil {
		t.Errorf("missing %v on a cgroup2-only host, want none", m)
	}
}

func TestCheckCgroupRootName(t *testing.T) {
	for name, ok := range map[string]bool{
		"socklb-node-0a1b2c": true,
		"socklb-node-":       false,
		"":                   false,
		"/":                  false,
		"kubepods":           false,
		"socklb-node-a/b":    false,
		"socklb-node-../x":   false,
	} {
		if err := checkCgroupRootName(name); (err == nil) != ok {
			t.Errorf("checkCgroupRootName(%q) = %v, want ok=%v", name, err, ok)
		}
	}
}

func testConfig() nodeConfig {
	return nodeConfig{
		name:       "socklb-node-abc",
		dir:        "/tmp/node",
		cgroupRoot: "/socklb-node-abc",
		bridge:     BridgeName,
		bridgeCIDR: DefaultBridgeCIDR,
		pauseImage: PauseImage,
		runc:       "/usr/sbin/runc",
		cniDir:     "/usr/lib/cni",
	}
}

// TestKubeletConfig pins the fields that keep kubelet off the host's
// settings and processes.
func TestKubeletConfig(t *testing.T) {
	data, err := testConfig().kubeletJSON()
	if err != nil {
		t.Fatal(err)
	}
	var conf map[string]any
	if err := json.Unmarshal(data, &conf); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]any{
		"failCgroupV1":                false,
		"cgroupDriver":                "cgroupfs",
		"cgroupRoot":                  "/socklb-node-abc",
		"protectKernelDefaults":       true,
		"makeIPTablesUtilChains":      false,
		"resolvConf":                  "",
		"address":                     "198.18.0.1",
		"readOnlyPort":                0.0,
		"staticPodPath":               "/tmp/node/manifests",
		"podLogsDir":                  "/tmp/node/pod-logs",
		"volumePluginDir":             "/tmp/node/volume-plugins",
		"imageGCHighThresholdPercent": 100.0,
		"imageGCLowThresholdPercent":  99.0,
		"containerRuntimeEndpoint":    "unix://" + containerdSocket,
	} {
		if got, ok := conf[key]; !ok || got != want {
			t.Errorf("%s = %v (set %v), want %v", key, got, ok, want)
		}
	}
	for _, key := range []string{"kubeletCgroups", "systemCgroups", "runtimeCgroups", "clusterDNS"} {
		if _, ok := conf[key]; ok {
			t.Errorf("%s is set: %v", key, conf[key])
		}
	}
	args := strings.Join(testConfig().kubeletArgs("/k"), " ")
	for _, want := range []string{"--node-ip=198.18.0.1", "--hostname-override=socklb-node-abc", "--root-dir=" + kubeletRootDir} {
		if !strings.Contains(args, want) {
			t.Errorf("kubelet args %q lack %s", args, want)
		}
	}
}

// TestContainerdConfig checks that containerd keeps off its default paths
// and restricts oom_score_adj.
func TestContainerdConfig(t *testing.T) {
	toml := testConfig().containerdTOML()
	for _, want := range []string{
		`root = "` + containerdRoot + `"`,
		`state = "` + containerdState + `"`,
		`address = "` + containerdSocket + `"`,
		`restrict_oom_score_adj = true`,
		`disable_apparmor = true`,
		`SystemdCgroup = false`,
		`sandbox_image = "` + PauseImage + `"`,
		`conf_dir = "/tmp/node/cni"`,
		`bin_dir = "/usr/lib/cni"`,
		`BinaryName = "/usr/sbin/runc"`,
		"[plugins.\"io.containerd.nri.v1.nri\"]\n  disable = true",
	} {
		if !strings.Contains(toml, want) {
			t.Errorf("containerd config lacks %s:\n%s", want, toml)
		}
	}
	for _, bad := range []string{`"/var/lib/containerd"`, `"/run/containerd"`, `"/run/containerd/containerd.sock"`, `"/opt/containerd"`, `"/etc/cni/net.d"`, `"/opt/cni/bin"`} {
		if strings.Contains(toml, bad) {
			t.Errorf("containerd config names the default path %s", bad)
		}
	}
	for _, p := range []string{containerdRoot, containerdState, containerdSocket} {
		if !strings.HasPrefix(p, "/run/") && !strings.HasPrefix(p, "/var/lib/") {
			t.Errorf("%s is not under the node's private tmpfs mounts", p)
		}
	}
}

func TestCNIConfig(t *testing.T) {
	data, err := testConfig().cniConflist()
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	for _, want := range []string{`"type": "bridge"`, `"bridge": "socklb0"`, `"ipMasq": false`, `"type": "host-local"`,
		`"subnet": "198.18.0.0/16"`, `"gateway": "198.18.0.1"`, `"rangeStart": "198.18.0.2"`} {
		if !strings.Contains(s, want) {
			t.Errorf("CNI config lacks %s:\n%s", want, s)
		}
	}
	if !netip.MustParsePrefix("198.18.0.0/15").Contains(DefaultBridgeCIDR.Addr()) {
		t.Errorf("the default bridge %s is outside the benchmarking range", DefaultBridgeCIDR)
	}
}

// TestSetupScript checks that the node's mounts cover what must stay
// private and that every kernel default kubelet checks is bind-mounted.
func TestSetupScript(t *testing.T) {
	s := testConfig().setupScript()
	lines := strings.Split(s, "\n")
	if lines[1] != "mount --make-rshared /" {
		t.Errorf("the script does not begin with making / rshared:\n%s", s)
	}
	for _, want := range []string{
		"mount -t tmpfs -o mode=0755 socklb-node /run",
		"mount -t tmpfs -o mode=0755 socklb-node /var/lib",
		"mount -t tmpfs -o mode=0755 socklb-node /var/log",
		"mount -t bpf -o mode=0700 bpffs /sys/fs/bpf",
		"hostname 'socklb-node-abc'",
		"if [ -d /etc/containerd ]; then mount -t tmpfs -o mode=0755 socklb-node /etc/containerd; fi",
	} {
		if !slices.Contains(lines, want) {
			t.Errorf("setup script lacks %q:\n%s", want, s)
		}
	}
	for _, k := range kernelDefaults {
		want := "mount --bind '/tmp/node/sysctl/" + strings.ReplaceAll(k.path, "/", ".") + "' /proc/sys/" + k.path
		if !slices.Contains(lines, want) {
			t.Errorf("setup script lacks %q", want)
		}
	}
	if strings.Contains(s, "sysctl ") || strings.Contains(s, "> /proc/sys") {
		t.Errorf("setup script writes a sysctl:\n%s", s)
	}
}

func TestParseContainerdVersion(t *testing.T) {
	for out, want := range map[string]struct {
		version string
		major   int
	}{
		"containerd github.com/containerd/containerd/v2 v2.3.7 \n":                      {"v2.3.7", 2},
		"containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3\n": {"1.6.20~ds1", 1},
	} {
		v, major, err := parseContainerdVersion(out)
		if err != nil || v != want.version || major != want.major {
			t.Errorf("parseContainerdVersion(%q) = %q, %d, %v; want %q, %d", out, v, major, err, want.version, want.major)
		}
	}
	for _, bad := range []string{"", "runc version 1.1.5", "containerd x vX.1"} {
		if _, _, err := parseContainerdVersion(bad); err == nil {
			t.Errorf("parseContainerdVersion(%q) accepted", bad)
		}
	}
}
