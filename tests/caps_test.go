package tests

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/socklb/socklb/internal/sandbox"
	"github.com/socklb/socklb/internal/testagent"
	"github.com/socklb/socklb/pkg/loader"
)

// capsServicesYAML is a Service web at 198.19.0.10, port 80/TCP and
// 53/UDP, both to port 8080 of the given pods.
func capsServicesYAML(pods ...int) string {
	var eps strings.Builder
	for _, p := range pods {
		fmt.Fprintf(&eps, "- addresses: [198.18.0.%d]\n  conditions: {ready: true}\n", p)
	}
	return `apiVersion: v1
kind: Service
metadata: {name: web, namespace: test}
spec:
  clusterIP: 198.19.0.10
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: 8080}
  - {name: dns, port: 53, protocol: UDP, targetPort: 8080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: test
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: dns, port: 8080, protocol: UDP}
endpoints:
` + eps.String()
}

// withCaps runs prog through util-linux setpriv so that it, although
// root, runs with exactly caps: its bounding set is cut to them and its
// inheritable and ambient sets are emptied, so the execve gives it caps as
// permitted and effective set and nothing else.
func withCaps(t *testing.T, caps []loader.Capability, prog string, args ...string) *exec.Cmd {
	t.Helper()
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Fatalf("this test needs setpriv (util-linux): %v", err)
	}
	bounding := "-all"
	for _, c := range caps {
		bounding += ",+" + strings.ToLower(strings.TrimPrefix(c.Name, "CAP_"))
	}
	cmd := exec.Command(setpriv, append([]string{"--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=" + bounding, "--", prog}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

func capMask(caps []loader.Capability) uint64 {
	var m uint64
	for _, c := range caps {
		m |= 1 << uint(c.Bit)
	}
	return m
}

func without(caps []loader.Capability, drop loader.Capability) []loader.Capability {
	var out []loader.Capability
	for _, c := range caps {
		if c.Name != drop.Name {
			out = append(out, c)
		}
	}
	return out
}

// procCaps reads the capability sets of pid from /proc.
func procCaps(pid int) (map[string]uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	sets := map[string]uint64{}
	for line := range strings.Lines(string(data)) {
		k, v, ok := strings.Cut(line, ":")
		if !ok || !strings.HasPrefix(k, "Cap") {
			continue
		}
		if sets[k], err = strconv.ParseUint(strings.TrimSpace(v), 16, 64); err != nil {
			return nil, fmt.Errorf("%s: %w", line, err)
		}
	}
	return sets, nil
}

// bindMount mounts src on a new directory (read-only if ro) until the
// test ends, and returns the directory.
func bindMount(t *testing.T, src string, ro bool) string {
	t.Helper()
	dst, err := os.MkdirTemp("", "socklb-bind-")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		os.Remove(dst)
		t.Fatalf("bind %s on %s: %v", src, dst, err)
	}
	t.Cleanup(func() {
		// Remove, never RemoveAll: if the unmount failed, this fails
		// instead of reaching into src.
		if err := errors.Join(unix.Unmount(dst, unix.MNT_DETACH), os.Remove(dst)); err != nil {
			t.Errorf("remove bind mount %s: %v", dst, err)
		}
	})
	if ro {
		if err := unix.Mount("", dst, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
			t.Fatalf("make %s read-only: %v", dst, err)
		}
	}
	return dst
}

// TestPrivilegedAgentCapabilities proves loader.RequiredCapabilities is
// the agent's set: with exactly those (as root, every other capability
// gone) it serves a Service and closes the sockets of a removed backend
// in its own network namespace; without any one of them it exits at once
// with an error that names the capability, before touching the kernel.
func TestPrivilegedAgentCapabilities(t *testing.T) {
	caps := loader.RequiredCapabilities
	if len(caps) == 0 {
		t.Fatal("loader.RequiredCapabilities is empty")
	}

	t.Run("exactly the required set", func(t *testing.T) {
		e := newAgentEnv(t, capsServicesYAML(1, 2))
		e.pods(t, 2, 8080)
		// As in deploy/capabilities/: the cgroup through a read-only
		// mount, the bpffs through a mount elsewhere than where the
		// host (here: the test) sees it.
		cgroup := bindMount(t, e.cg.Path(), true)
		bpffs := filepath.Join(bindMount(t, filepath.Dir(e.bpffs), false), filepath.Base(e.bpffs))
		// In the clients' namespace: the agent closes sockets there
		// without setns, which would need CAP_SYS_ADMIN.
		a := testagent.Start(t, withCaps(t, caps, agentBin, "run", "--services-file="+e.servicesFile,
			"--min-sync-interval=10ms", "--health-addr=", "--log-level=debug",
			"--bpffs-path="+bpffs, "--cgroup-path="+cgroup), e.ns)
		a.WaitServing(t, 15*time.Second)

		sets, err := procCaps(a.Cmd.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		want := capMask(caps)
		for _, k := range []string{"CapEff", "CapPrm", "CapBnd"} {
			if sets[k] != want {
				t.Errorf("agent %s = %#x, want exactly %#x (%d capabilities)", k, sets[k], want, len(caps))
			}
		}
		if sets["CapInh"] != 0 || sets["CapAmb"] != 0 {
			t.Errorf("agent CapInh = %#x, CapAmb = %#x; want none", sets["CapInh"], sets["CapAmb"])
		}
		if !strings.Contains(a.Logs(), "running without CAP_SYS_ADMIN") {
			t.Errorf("the agent did not say what it does without CAP_SYS_ADMIN:\n%s", a.Logs())
		}

		for range 10 {
			if name, err := e.ask("198.19.0.10:80"); err != nil || (name != "pod-1" && name != "pod-2") {
				t.Fatalf("connect to the Service: %q, %v", name, err)
			}
		}

		// Without CAP_SYS_ADMIN, in its own namespace.
		t.Run("closes the sockets of a removed backend", func(t *testing.T) {
			for _, f := range loader.ProbeFeatures() {
				if f.Name == loader.FeatSockDestroy {
					sandbox.RequireFeature(t, f.Available, fmt.Sprintf("%s [>= %s]", f.Name, f.MinKernel), f.Detail)
				}
			}
			// A connected UDP socket to pod-1, which then leaves the Service.
			var toPod1 net.Conn
			for i := 0; toPod1 == nil; i++ {
				if i == 100 {
					t.Fatal("100 UDP sockets and none reached pod-1")
				}
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				c, err := e.ns.Dial(ctx, "udp4", "198.19.0.10:53")
				cancel()
				if err != nil {
					t.Fatal(err)
				}
				name, err := exchange(c, "udp4")
				if err != nil {
					c.Close()
					t.Fatal(err)
				}
				if name != "pod-1" {
					c.Close()
					continue
				}
				toPod1 = c
				t.Cleanup(func() { c.Close() })
			}
			e.writeServices(t, capsServicesYAML(2))
			a.WaitLog(t, "destroyed sockets of removed backends", 15*time.Second)
			if _, err := exchange(toPod1, "udp4"); err == nil {
				t.Error("the UDP socket to the removed backend still works")
			}
			if strings.Contains(a.Logs(), "level=ERROR") {
				t.Errorf("the agent logged errors:\n%s", a.Logs())
			}
		})
	})

	// One environment for every refused start: none may touch it.
	e := newAgentEnv(t, capsServicesYAML(1))
	for _, drop := range caps {
		t.Run("without "+drop.Name, func(t *testing.T) {
			set := without(caps, drop)
			// The harness itself: setpriv gives exactly set.
			out, err := withCaps(t, set, "cat", "/proc/self/status").Output()
			if err != nil {
				t.Fatalf("setpriv: %v", err)
			}
			if want := fmt.Sprintf("CapEff:\t%016x\n", capMask(set)); !strings.Contains(string(out), want) {
				t.Fatalf("setpriv gave\n%s\nwant %q", out, want)
			}

			a := testagent.Start(t, withCaps(t, set, agentBin, "run", "--services-file="+e.servicesFile,
				"--health-addr=", "--metrics-addr=", "--bpffs-path="+e.bpffs, "--cgroup-path="+e.cg.Path()), nil)
			select {
			case <-a.Done():
			case <-time.After(10 * time.Second):
				t.Fatalf("the agent without %s still runs after 10 s:\n%s", drop.Name, a.Logs())
			}
			if st := a.Cmd.ProcessState; st == nil || st.Success() {
				t.Fatalf("the agent without %s exited with %v, want a failure:\n%s", drop.Name, st, a.Logs())
			}
			logs := a.Logs()
			t.Logf("without %s (exit %d):\n%s", drop.Name, a.Cmd.ProcessState.ExitCode(), logs)
			if want := "missing capability " + drop.Name + ": " + drop.Why; !strings.Contains(logs, want) {
				t.Errorf("the error does not say %q", want)
			}
			for _, c := range set {
				if strings.Contains(logs, "missing capability "+c.Name) {
					t.Errorf("the error names %s, which the agent has", c.Name)
				}
			}
			if _, err := os.Stat(e.bpffs); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the refused agent created its pin directory (%v)", err)
			}

			// The check above is the agent's own list; the kernel must
			// agree that the capability is needed. With the check off,
			// the agent must still fail, on the kernel's refusal.
			raw := newAgentEnv(t, capsServicesYAML(1))
			cmd := withCaps(t, set, agentBin, "run", "--services-file="+raw.servicesFile,
				"--health-addr=", "--metrics-addr=", "--bpffs-path="+raw.bpffs, "--cgroup-path="+raw.cg.Path())
			cmd.Env = append(os.Environ(), "SOCKLB_SKIP_CAPABILITY_CHECK=1")
			unchecked := testagent.Start(t, cmd, nil)
			// Without CAP_PERFMON the verifier simulates speculative
			// paths, which takes long under emulation (the kernel matrix
			// runs this in qemu without KVM); natively it fails in about
			// 2 s.
			started := time.Now()
			select {
			case <-unchecked.Done():
			case <-time.After(3 * time.Minute):
				t.Fatalf("without %s and without the agent's check, the kernel let the agent run:\n%s", drop.Name, unchecked.Logs())
			}
			t.Logf("without %s and the check, the agent failed after %s", drop.Name, time.Since(started).Round(time.Millisecond))
			if st := unchecked.Cmd.ProcessState; st == nil || st.Success() {
				t.Fatalf("without %s and the check, the agent exited with %v, want a failure", drop.Name, st)
			}
			if strings.Contains(unchecked.Logs(), "missing capability") {
				t.Fatalf("SOCKLB_SKIP_CAPABILITY_CHECK=1 did not skip the check:\n%s", unchecked.Logs())
			}
			t.Logf("without %s, the kernel refuses:\n%s", drop.Name, lastLines(unchecked.Logs(), 3))
		})
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
