package sandbox

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// RequirePrivileges fails the test (t.Fatal) unless the process is root with
// the capabilities the sandbox and socklb need, cgroup2 is mounted, the
// kernel has bpffs and network namespaces. Privileged tests must run, never
// skip silently, on the machines that run them.
func RequirePrivileges(t testing.TB) {
	t.Helper()
	if err := CheckPrivileges(); err != nil {
		t.Fatalf("privileged test cannot run: %v", err)
	}
}

// CheckPrivileges is RequirePrivileges for programs: it reports everything
// that is missing in one error.
func CheckPrivileges() error {
	var errs []error
	if os.Geteuid() != 0 {
		errs = append(errs, fmt.Errorf("not root (euid %d)", os.Geteuid()))
	}
	if err := checkCaps(map[string]uint{
		"CAP_NET_ADMIN": unix.CAP_NET_ADMIN,
		"CAP_SYS_ADMIN": unix.CAP_SYS_ADMIN,
		"CAP_BPF":       unix.CAP_BPF,
	}); err != nil {
		errs = append(errs, err)
	}
	if mount, err := Cgroup2Mount(); err != nil {
		errs = append(errs, err)
	} else {
		var st unix.Statfs_t
		if err := unix.Statfs(mount, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
			errs = append(errs, fmt.Errorf("cgroup2 mount %s is not usable (%v)", mount, err))
		}
	}
	if ok, err := kernelHasFS("bpf"); err != nil {
		errs = append(errs, err)
	} else if !ok {
		errs = append(errs, errors.New("kernel has no bpf file system (CONFIG_BPF_SYSCALL)"))
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		errs = append(errs, fmt.Errorf("no network namespaces: %w", err))
	}
	return errors.Join(errs...)
}

func checkCaps(want map[string]uint) error {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return err
	}
	var eff uint64
	found := false
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			eff, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return fmt.Errorf("parse CapEff: %w", err)
			}
			found = true
		}
	}
	if !found {
		return errors.New("no CapEff in /proc/self/status")
	}
	var missing []string
	for name, bit := range want {
		if eff&(1<<bit) == 0 {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return fmt.Errorf("missing capabilities %v", missing)
	}
	return nil
}

func kernelHasFS(name string) (bool, error) {
	f, err := os.Open("/proc/filesystems")
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 0 && fields[len(fields)-1] == name {
			return true, nil
		}
	}
	return false, sc.Err()
}
