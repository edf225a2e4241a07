package kubeproxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/socklb/socklb/internal/sandbox"
	"github.com/socklb/socklb/tests/e2e/cluster"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// cleanupTimeout bounds `kube-proxy --cleanup` and each command stop runs.
const cleanupTimeout = 2 * time.Minute

// kubeProxyTable is the nf_tables table of kube-proxy's nftables mode
// (one in family ip, one in ip6).
const kubeProxyTable = "kube-proxy"

// RulesFor reports whether kube-proxy's rules already send vip to
// endpoints: in nftables mode, an element of the service-ips map for
// vip with protocol tcp, udp or sctp (`nft get element`, cheap at any
// size); in iptables mode, a KUBE-SERVICES rule for vip in the nat table
// (`iptables-save -t nat`, which takes seconds with 10 000 Services). A
// Service without ready endpoints has no such rule in either mode.
func (p *Proxy) RulesFor(ctx context.Context, vip netip.AddrPort) (bool, error) {
	addr := vip.Addr().Unmap()
	ipv6 := addr.Is6()
	if p.Mode == NFTables {
		family := "ip"
		if ipv6 {
			family = "ip6"
		}
		for _, proto := range []string{"tcp", "udp", "sctp"} {
			elem := fmt.Sprintf("{ %s . %s . %d }", addr, proto, vip.Port())
			_, stderr, err := runIn(ctx, p.c.NS, p.env, "nft", "get", "element", family, kubeProxyTable, "service-ips", elem)
			if err == nil {
				return true, nil
			}
			// A missing element, map or table is "No such file or
			// directory" (ENOENT from the kernel).
			if !strings.Contains(stderr, "No such file or directory") {
				return false, fmt.Errorf("nft get element %s: %w: %s", elem, err, stderr)
			}
		}
		return false, nil
	}
	save := "iptables-save"
	dst := addr.String() + "/32"
	if ipv6 {
		save, dst = "ip6tables-save", addr.String()+"/128"
	}
	out, stderr, err := runIn(ctx, p.c.NS, p.env, save, "-t", "nat")
	if err != nil {
		return false, fmt.Errorf("%s -t nat: %w: %s", save, err, stderr)
	}
	return hasServiceRule(out, dst, vip.Port()), nil
}

// hasServiceRule looks in iptables-save output for the KUBE-SERVICES rule
// of a ClusterIP:
//
//	-A KUBE-SERVICES -d 198.19.0.10/32 -p tcp -m comment --comment "ns/svc:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-...
func hasServiceRule(save []byte, dst string, port uint16) bool {
	d, dport := " -d "+dst+" ", " --dport "+strconv.Itoa(int(port))+" "
	s := bufio.NewScanner(bytes.NewReader(save))
	s.Buffer(nil, 1<<20)
	for s.Scan() {
		line := s.Text()
		if strings.HasPrefix(line, "-A KUBE-SERVICES ") && strings.Contains(line, d) &&
			strings.Contains(line, dport) && strings.Contains(line, " -j KUBE-SVC-") {
			return true
		}
	}
	return false
}

// cleanup runs after kube-proxy was killed: `kube-proxy --cleanup`, then
// it deletes the nf_tables tables that were not there before Start,
// flushes conntrack, and checks for leftovers. Everything runs inside the
// cluster's namespace.
func cleanup(c *cluster.Cluster, env []string, mode Mode, logPath string, tablesBefore []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	var errs []error
	out, stderr, err := runIn(ctx, c.NS, env, c.Binaries.KubeProxy, "--cleanup", "--v=2")
	if f, ferr := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644); ferr == nil {
		fmt.Fprintf(f, "=== %s: kube-proxy --cleanup (%v)\n%s%s", time.Now().Format(time.RFC3339Nano), err, out, stderr)
		f.Close()
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("kube-proxy --cleanup (%s mode): %w: %s", mode, err, lastLines(stderr, 5)))
	}

	if err := removeKubeletFirewall(ctx, c.NS, env); err != nil {
		errs = append(errs, err)
	}

	tables, err := nftTables(ctx, c.NS, env)
	if err != nil {
		errs = append(errs, err)
	}
	for _, t := range tables {
		if slices.Contains(tablesBefore, t) {
			continue
		}
		family, name, _ := strings.Cut(t, " ")
		if _, stderr, err := runIn(ctx, c.NS, env, "nft", "delete", "table", family, name); err != nil {
			errs = append(errs, fmt.Errorf("nft delete table %s: %w: %s", t, err, stderr))
		}
	}

	// Entries of connections kube-proxy NATed would outlive its rules and
	// could meet the next peer of a benchmark.
	err = c.NS.Do(func() error {
		h, err := netlink.NewHandle(unix.NETLINK_NETFILTER)
		if err != nil {
			return err
		}
		defer h.Close()
		return h.ConntrackTableFlush(netlink.ConntrackTable)
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("flush conntrack in %s: %w", c.NS, err))
	}

	if left, err := Leftovers(ctx, c.NS); err != nil {
		errs = append(errs, err)
	} else if len(left) > 0 {
		errs = append(errs, fmt.Errorf("kube-proxy left rules in %s: %s", c.NS, strings.Join(left, "; ")))
	}
	return errors.Join(errs...)
}

// removeKubeletFirewall deletes the filter table's KUBE-FIREWALL chain
// and its jumps from INPUT and OUTPUT, in the iptables backend of env.
// kube-proxy's iptables mode creates this copy of kubelet's chain, and
// `kube-proxy --cleanup` leaves it on purpose (kubelet owns it). With
// iptables-nft the whole table goes anyway; with iptables-legacy only this
// removes it. No kubelet runs in the namespace.
func removeKubeletFirewall(ctx context.Context, ns *sandbox.Netns, env []string) error {
	const chain = "KUBE-FIREWALL"
	var errs []error
	for _, fam := range []string{"iptables", "ip6tables"} {
		out, stderr, err := runIn(ctx, ns, env, fam+"-save", "-t", "filter")
		if err != nil {
			errs = append(errs, fmt.Errorf("%s-save -t filter: %w: %s", fam, err, stderr))
			continue
		}
		if !strings.Contains(string(out), "\n:"+chain+" ") && !strings.HasPrefix(string(out), ":"+chain+" ") {
			continue
		}
		for _, from := range []string{"INPUT", "OUTPUT"} {
			// One jump each is what kube-proxy adds; stop at the first
			// failure (no more jumps).
			for range 10 {
				if _, _, err := runIn(ctx, ns, env, fam, "-w", "5", "-t", "filter", "-D", from, "-j", chain); err != nil {
					break
				}
			}
		}
		for _, op := range []string{"-F", "-X"} {
			if _, stderr, err := runIn(ctx, ns, env, fam, "-w", "5", "-t", "filter", op, chain); err != nil {
				errs = append(errs, fmt.Errorf("%s -t filter %s %s: %w: %s", fam, op, chain, err, stderr))
			}
		}
	}
	return errors.Join(errs...)
}

// Leftovers lists kube-proxy's rules in ns: KUBE-* chains in the
// iptables-nft and iptables-legacy rulesets (IPv4 and IPv6) and
// kube-proxy's nf_tables tables. Empty means clean. It only reads.
func Leftovers(ctx context.Context, ns *sandbox.Netns) ([]string, error) {
	env := []string{"PATH=" + path}
	var left []string
	var errs []error
	for _, save := range []string{"iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"} {
		if _, err := exec.LookPath(save); err != nil {
			continue
		}
		out, stderr, err := runIn(ctx, ns, env, save)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w: %s", save, err, stderr))
			continue
		}
		var chains []string
		for line := range strings.Lines(string(out)) {
			if name, ok := strings.CutPrefix(line, ":KUBE-"); ok {
				chain, _, _ := strings.Cut(name, " ")
				chains = append(chains, "KUBE-"+chain)
			}
		}
		if len(chains) > 0 {
			left = append(left, fmt.Sprintf("%s: %d KUBE-* chains (%s)", save, len(chains), strings.Join(chains[:min(len(chains), 5)], " ")))
		}
	}
	tables, err := nftTables(ctx, ns, env)
	if err != nil {
		errs = append(errs, err)
	}
	for _, t := range tables {
		if _, name, _ := strings.Cut(t, " "); name == kubeProxyTable {
			left = append(left, "nft table "+t)
		}
	}
	return left, errors.Join(errs...)
}

// nftTables lists the nf_tables tables in ns as "family name".
func nftTables(ctx context.Context, ns *sandbox.Netns, env []string) ([]string, error) {
	out, stderr, err := runIn(ctx, ns, env, "nft", "list", "tables")
	if err != nil {
		return nil, fmt.Errorf("nft list tables: %w: %s", err, stderr)
	}
	var tables []string
	for line := range strings.Lines(string(out)) {
		if t, ok := strings.CutPrefix(strings.TrimSpace(line), "table "); ok {
			tables = append(tables, t)
		}
	}
	return tables, nil
}

// runIn runs a command inside ns with env and returns its stdout and
// stderr. Cancelling ctx kills it (only it).
func runIn(ctx context.Context, ns *sandbox.Netns, env []string, name string, args ...string) (stdout []byte, stderr string, err error) {
	cmd := exec.Command(name, args...)
	cmd.Env = env
	// exec.Command resolved name with our PATH; resolve it with env's.
	if !strings.Contains(name, "/") {
		if lp, err := lookPath(env, name); err == nil {
			cmd.Path, cmd.Err = lp, nil
		}
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	stop, err := sandbox.StartProcessIn(cmd, ns, nil)
	if err != nil {
		return nil, "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-done
		err = context.Cause(ctx)
	}
	_ = stop() // it was waited for: nothing left to do
	return out.Bytes(), strings.TrimSpace(errOut.String()), err
}

// lookPath finds name in the PATH of env.
func lookPath(env []string, name string) (string, error) {
	for _, kv := range env {
		if dirs, ok := strings.CutPrefix(kv, "PATH="); ok {
			for dir := range strings.SplitSeq(dirs, ":") {
				p := dir + "/" + name
				if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
					return p, nil
				}
			}
		}
	}
	return "", fmt.Errorf("%s: %w", name, exec.ErrNotFound)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
