// Command demo shows socklb balancing a ClusterIP on this machine without
// touching it: it makes a private network namespace with three backend
// "pods" on its loopback, a child cgroup and a private bpffs, runs the agent
// on examples/demo.yaml attached to that cgroup only, connects to the
// ClusterIP from inside the namespace, and removes everything at the end.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/socklb/socklb/internal/sandbox"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run() (err error) {
	agentBin := flag.String("agent", "bin/socklb-agent", "agent binary")
	services := flag.String("services", "examples/demo.yaml", "services file")
	connects := flag.Int("connects", 30, "connects to the ClusterIP")
	flag.Parse()
	if err := sandbox.CheckPrivileges(); err != nil {
		return fmt.Errorf("the demo needs root: %w", err)
	}
	// The README promises a bpftool dump: without bpftool the demo fails
	// before it changes anything, instead of leaving the dump out.
	bpftool, err := exec.LookPath("bpftool")
	if err != nil {
		return fmt.Errorf("the demo shows a bpftool map dump, and bpftool is missing (make deps installs it): %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	var undo sandbox.Undo
	defer func() {
		step("Cleaning up: agent cleanup, cgroup, netns, bpffs")
		err = errors.Join(err, undo.Run())
		if err == nil {
			fmt.Println("done: nothing left behind")
		}
	}()

	step("Creating a private network namespace, a child cgroup and a bpffs")
	ns, rm, err := sandbox.CreateNetns("socklb-demo-")
	if err != nil {
		return err
	}
	undo.Add(rm)
	cg, rm, err := sandbox.CreateCgroup("socklb-demo-")
	if err != nil {
		return err
	}
	undo.Add(rm)
	fs, rm, err := sandbox.CreateBPFFS("socklb-demo-bpffs-")
	if err != nil {
		return err
	}
	undo.Add(rm)
	bpffs := filepath.Join(fs, "socklb")
	fmt.Printf("  netns %s, cgroup %s, bpffs %s\n", ns.Path(), cg.Path(), bpffs)

	step("Starting backend pods on the namespace's loopback")
	for i, name := range []string{"web-1", "web-2", "web-3", "web-4 (not ready)"} {
		addr := netip.AddrFrom4([4]byte{198, 18, 0, byte(11 + i)})
		if err := ns.AddAddr(netip.PrefixFrom(addr, 32)); err != nil {
			return err
		}
		_, rm, err := sandbox.RunTCPNameServer(ns, netip.AddrPortFrom(addr, 8080), strings.Fields(name)[0])
		if err != nil {
			return err
		}
		undo.Add(rm)
		fmt.Printf("  %-17s %s:8080\n", name, addr)
	}

	agentArgs := []string{"--bpffs-path=" + bpffs, "--cgroup-path=" + cg.Path()}
	undo.Add(func() error {
		out, err := exec.Command(*agentBin, append([]string{"cleanup"}, agentArgs...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("agent cleanup: %w\n%s", err, out)
		}
		return nil
	})
	step("Starting the agent on " + *services)
	logs, stopAgent, err := startAgent(*agentBin, append([]string{"run", "--services-file=" + *services}, agentArgs...))
	if err != nil {
		return err
	}
	undo.Add(stopAgent)
	if err := waitFor(ctx, logs, "maps synced"); err != nil {
		return err
	}

	// Sockets belong to the cgroup of the process that opens them.
	restore, err := cg.EnterSelf()
	if err != nil {
		return err
	}
	undo.Add(restore)

	step(fmt.Sprintf("Connecting %d times to the ClusterIP 198.19.0.10:80 (Service demo/web)", *connects))
	counts := map[string]int{}
	for range *connects {
		name, err := ask(ctx, ns, "198.19.0.10:80")
		if err != nil {
			return fmt.Errorf("connect to demo/web: %w", err)
		}
		counts[name]++
	}
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range counts {
			if !yield(k) {
				return
			}
		}
	}) {
		fmt.Printf("  %-6s %3d  %s\n", name, counts[name], strings.Repeat("#", counts[name]))
	}
	if len(counts) != 3 || counts["web-4"] != 0 {
		return fmt.Errorf("connects reached %v, want the three ready pods", counts)
	}

	step("Connecting to the ClusterIP 198.19.0.20:80 (Service demo/empty, no endpoints)")
	_, err = ask(ctx, ns, "198.19.0.20:80")
	fmt.Printf("  connect: %v\n", err)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("empty service: got %v, want connection refused", err)
	}

	step("curl http://127.0.0.1:9810/metrics (the socklb_service_* and *_programmed lines)")
	if err := showMetrics(ctx, "http://127.0.0.1:9810/metrics"); err != nil {
		return err
	}

	step("socklb-agent inspect")
	if err := show(*agentBin, append([]string{"inspect"}, agentArgs...)...); err != nil {
		return err
	}
	step("bpftool map dump pinned " + filepath.Join(bpffs, "socklb_be_v3"))
	return show(bpftool, "map", "dump", "pinned", filepath.Join(bpffs, "socklb_be_v3"))
}

func step(s string) { fmt.Printf("\n==> %s\n", s) }

// showMetrics prints the per-Service counters and the programmed totals
// from the agent's metrics endpoint (its default address, on the host's
// loopback).
func showMetrics(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("scrape metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("scrape metrics: %s", resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "socklb_service_") || strings.HasPrefix(line, "socklb_frontends_programmed") ||
			strings.HasPrefix(line, "socklb_backends_programmed") {
			fmt.Println("  " + line)
		}
	}
	return sc.Err()
}

func show(bin string, args ...string) error {
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	return cmd.Run()
}

func ask(ctx context.Context, ns *sandbox.Netns, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := ns.Dial(ctx, "tcp4", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// startAgent runs the agent with its log going to a file the demo reads.
func startAgent(bin string, args []string) (logPath string, stop func() error, err error) {
	f, err := os.CreateTemp("", "socklb-demo-agent-*.log")
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		os.Remove(f.Name())
		return "", nil, fmt.Errorf("start agent: %w", err)
	}
	fmt.Printf("  agent pid %d, log %s\n", cmd.Process.Pid, f.Name())
	return f.Name(), func() error {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		f.Close()
		return os.Remove(f.Name())
	}, nil
}

func waitFor(ctx context.Context, logPath, substr string) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		b, _ := os.ReadFile(logPath)
		if strings.Contains(string(b), substr) {
			return nil
		}
		if strings.Contains(string(b), "level=ERROR") || time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("agent did not report %q:\n%s", substr, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
