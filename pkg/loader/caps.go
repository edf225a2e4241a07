package loader

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrMissingCapability: the process lacks a Linux capability the agent
// needs. CheckCapabilities wraps it once per missing capability.
var ErrMissingCapability = errors.New("missing capability")

// Capability is a Linux capability the agent uses, and what for.
type Capability struct {
	Name string // as in capabilities(7), e.g. CAP_BPF
	Bit  int
	Why  string
}

// RequiredCapabilities are what the agent cannot run without (measured by
// tests/caps_test.go, which drops each in turn). The kernel accepts
// CAP_SYS_ADMIN in place of each of them (bpf_token_capable), so a
// process with CAP_SYS_ADMIN passes the check whatever else it lacks, as
// it does in the kernel.
var RequiredCapabilities = []Capability{
	{"CAP_BPF", unix.CAP_BPF,
		"needed to create BPF maps and load programs"},
	{"CAP_NET_ADMIN", unix.CAP_NET_ADMIN,
		"needed to load the cgroup socket programs (connect4, sendmsg4, … are networking program types)"},
	{"CAP_PERFMON", unix.CAP_PERFMON,
		"needed to load the socket iterators that close sockets of removed backends (tracing programs), " +
			"and for the verifier to accept loops without simulating speculative execution (Spectre v1)"},
}

// capSysAdmin is optional: without it the agent does everything but
// enter other network namespaces and mount bpffs.
var capSysAdmin = Capability{"CAP_SYS_ADMIN", unix.CAP_SYS_ADMIN,
	"needed to enter other network namespaces (setns) and close sockets of removed backends there, " +
		"and to mount bpffs when none is mounted"}

// CheckCapabilities fails, before anything touches the kernel, when the
// process lacks a capability of RequiredCapabilities, naming every missing
// one with what it is for; each is wrapped in ErrMissingCapability. It
// only logs (at info level) what the agent does without CAP_SYS_ADMIN.
// Of opts it uses Logger.
func CheckCapabilities(opts Options) error {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	eff, err := effectiveCapabilities()
	if err != nil {
		return err
	}
	if err := missingCapabilities(eff); err != nil {
		return err
	}
	if !hasCap(eff, capSysAdmin.Bit) {
		log.Info("running without CAP_SYS_ADMIN: sockets of removed backends are closed only in the agent's own network namespace",
			"capability", capSysAdmin.Name, "needed_for", capSysAdmin.Why)
	}
	return nil
}

// missingCapabilities is the check of CheckCapabilities on an effective
// set.
func missingCapabilities(eff uint64) error {
	if hasCap(eff, capSysAdmin.Bit) {
		return nil
	}
	var errs []error
	for _, c := range RequiredCapabilities {
		if !hasCap(eff, c.Bit) {
			errs = append(errs, fmt.Errorf("%w %s: %s", ErrMissingCapability, c.Name, c.Why))
		}
	}
	if len(errs) == 0 {
		return nil
	}
	names := make([]string, 0, len(RequiredCapabilities))
	for _, c := range RequiredCapabilities {
		names = append(names, c.Name)
	}
	// errors.Join prints one line per capability; the hint comes last.
	errs = append(errs, fmt.Errorf("run the agent with %s (or privileged); see deploy/capabilities/", strings.Join(names, ", ")))
	return errors.Join(errs...)
}

func hasCap(eff uint64, bit int) bool { return eff&(1<<uint(bit)) != 0 }

// effectiveCapabilities returns the calling thread's effective set. Every
// thread of the agent has the same: it never changes its capabilities.
func effectiveCapabilities() (uint64, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData // version 3: bits 0–31, then 32–63
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return 0, fmt.Errorf("read own capabilities: %w", err)
	}
	return uint64(data[1].Effective)<<32 | uint64(data[0].Effective), nil
}

// haveCapability reports whether the process has the capability in its
// effective set; an unreadable set counts as not having it.
func haveCapability(bit int) bool {
	eff, err := effectiveCapabilities()
	return err == nil && hasCap(eff, bit)
}
