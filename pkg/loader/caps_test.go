package loader

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestMissingCapabilities(t *testing.T) {
	const (
		bpf      = uint64(1) << unix.CAP_BPF
		netAdmin = uint64(1) << unix.CAP_NET_ADMIN
		perfmon  = uint64(1) << unix.CAP_PERFMON
		sysAdmin = uint64(1) << unix.CAP_SYS_ADMIN
		others   = uint64(1)<<unix.CAP_CHOWN | uint64(1)<<unix.CAP_SYS_PTRACE
	)
	for _, tc := range []struct {
		name    string
		eff     uint64
		missing []string
	}{
		{"the three", bpf | netAdmin | perfmon, nil},
		{"the three and more", bpf | netAdmin | perfmon | others, nil},
		// The kernel accepts CAP_SYS_ADMIN for each (bpf_token_capable).
		{"CAP_SYS_ADMIN alone", sysAdmin, nil},
		{"none", 0, []string{"CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"}},
		{"no CAP_BPF", netAdmin | perfmon | others, []string{"CAP_BPF"}},
		{"no CAP_NET_ADMIN", bpf | perfmon, []string{"CAP_NET_ADMIN"}},
		{"no CAP_PERFMON", bpf | netAdmin, []string{"CAP_PERFMON"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := missingCapabilities(tc.eff)
			if len(tc.missing) == 0 {
				if err != nil {
					t.Fatalf("missingCapabilities(%#x) = %v, want nil", tc.eff, err)
				}
				return
			}
			if !errors.Is(err, ErrMissingCapability) {
				t.Fatalf("missingCapabilities(%#x) = %v, want ErrMissingCapability", tc.eff, err)
			}
			msg := err.Error()
			for _, c := range RequiredCapabilities {
				line := "missing capability " + c.Name + ": " + c.Why
				want := false
				for _, m := range tc.missing {
					want = want || m == c.Name
				}
				if got := strings.Contains(msg, line); got != want {
					t.Errorf("error names %s: %v, want %v; error:\n%s", c.Name, got, want, msg)
				}
			}
		})
	}
}

// TestEffectiveCapabilities compares Capget with the kernel's own text.
func TestEffectiveCapabilities(t *testing.T) {
	got, err := effectiveCapabilities()
	if err != nil {
		t.Fatal(err)
	}
	status, err := os.ReadFile("/proc/thread-self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			want, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("effective capabilities %#x, /proc says %#x", got, want)
			}
			return
		}
	}
	t.Fatal("no CapEff in /proc/thread-self/status")
}
