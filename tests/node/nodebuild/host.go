package nodebuild

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Runc is the host's runc, which containerd-shim-runc-v2 runs.
type Runc struct {
	Path    string
	Version string // "1.1.5+ds1"
}

// CNI is the directory of the host's CNI plugins (containerd's bin_dir).
type CNI struct {
	Dir     string
	Plugins []string // CNIPlugins, as paths
	Version string   // the Debian package's, when the plugins do not know theirs
}

// CNIPlugins are the plugins the test node's network configuration uses.
var CNIPlugins = []string{"bridge", "host-local", "loopback"}

// cniDirs are where Debian's containernetworking-plugins (first) and the
// upstream release tarballs put the plugins.
var cniDirs = []string{"/usr/lib/cni", "/opt/cni/bin"}

// minRunc is the oldest runc that also joins containers to the cgroup2
// hierarchy on this host's hybrid cgroup layout.
var minRunc = [2]int{1, 1}

const debianHint = "install Debian's runc and containernetworking-plugins (make deps)"

// FindRunc finds runc in $PATH (or /usr/sbin, Debian's place) and checks
// its version.
func FindRunc(ctx context.Context) (*Runc, error) {
	path, err := exec.LookPath("runc")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/runc"); serr != nil {
			return nil, fmt.Errorf("no runc in $PATH or /usr/sbin: %s", debianHint)
		}
		path = "/usr/sbin/runc"
	}
	if path, err = filepath.Abs(path); err != nil {
		return nil, err
	}
	out, err := exec.CommandContext(ctx, path, "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --version: %w", path, err)
	}
	version, err := parseRuncVersion(string(out))
	if err != nil {
		return nil, fmt.Errorf("%s --version: %w", path, err)
	}
	return &Runc{Path: path, Version: version}, nil
}

// parseRuncVersion reads "runc version 1.1.5+ds1" from `runc --version`
// and fails when it is older than minRunc.
func parseRuncVersion(out string) (string, error) {
	m := regexp.MustCompile(`(?m)^runc version (([0-9]+)\.([0-9]+)\S*)`).FindStringSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("no `runc version x.y` line in %q", out)
	}
	major, _ := strconv.Atoi(m[2])
	minor, _ := strconv.Atoi(m[3])
	if major < minRunc[0] || major == minRunc[0] && minor < minRunc[1] {
		return "", fmt.Errorf("runc %s is older than %d.%d, which the hybrid cgroup layout needs", m[1], minRunc[0], minRunc[1])
	}
	return m[1], nil
}

// FindCNI finds the first of /usr/lib/cni and /opt/cni/bin that holds
// every plugin of CNIPlugins.
func FindCNI(ctx context.Context) (*CNI, error) {
	var missing []string
	for _, dir := range cniDirs {
		c := &CNI{Dir: dir}
		for _, p := range CNIPlugins {
			path := filepath.Join(dir, p)
			if fi, err := os.Stat(path); err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
				missing = append(missing, path)
				continue
			}
			c.Plugins = append(c.Plugins, path)
		}
		if len(c.Plugins) == len(CNIPlugins) {
			c.Version = cniVersion(ctx, c.Plugins[0])
			return c, nil
		}
	}
	return nil, fmt.Errorf("CNI plugins missing (%s): %s", strings.Join(missing, ", "), debianHint)
}

// cniVersion is what the plugin says about itself ("CNI bridge plugin
// v1.1.1"), or, when that is "unknown" (Debian's builds), the version of
// the Debian package that holds it.
func cniVersion(ctx context.Context, plugin string) string {
	// Run without CNI_COMMAND, a plugin prints its about text and exits.
	out, _ := exec.CommandContext(ctx, plugin).CombinedOutput()
	if m := regexp.MustCompile(`CNI \S+ plugin (v?[0-9]\S*)`).FindSubmatch(out); m != nil {
		return string(m[1])
	}
	owner, err := exec.CommandContext(ctx, "dpkg-query", "-S", plugin).Output()
	if err != nil {
		return "unknown"
	}
	pkg, _, _ := strings.Cut(strings.TrimSpace(string(owner)), ":")
	v, err := exec.CommandContext(ctx, "dpkg-query", "-W", "-f", "${Version}", pkg).Output()
	if err != nil || len(v) == 0 {
		return "unknown"
	}
	return string(v) + " (Debian " + pkg + ")"
}
