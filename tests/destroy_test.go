package tests

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/socklb/socklb/internal/sandbox"
	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/loader"
)

// TestPrivilegedRemovedBackendSocketsAreDestroyed: a connected UDP socket
// (a DNS client, say) to a backend that leaves the service is destroyed,
// so the client's next send fails instead of going to the dead backend;
// TCP sockets too when asked for. Sockets to backends that stay live on.
func TestPrivilegedRemovedBackendSocketsAreDestroyed(t *testing.T) {
	d := newDatapath(t)
	requireFeature(t, d.dp, loader.FeatSockDestroy)
	d.pod(t, "pod-1", "198.18.0.1", 5353)
	d.pod(t, "pod-2", "198.18.0.2", 5353)
	both := []string{"198.18.0.1:5353", "198.18.0.2:5353"}
	d.apply(t, service(vip, 53, lb.UDP, both...), service(vip, 80, lb.TCP, both...))

	// Open connected sockets until each backend has one of each kind.
	udp := map[string]net.Conn{}
	tcp := map[string]net.Conn{}
	for len(udp) < 2 || len(tcp) < 2 {
		for _, tc := range []struct {
			network, addr string
			into          map[string]net.Conn
		}{{"udp4", vip + ":53", udp}, {"tcp4", vip + ":80", tcp}} {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			c, err := d.ns.Dial(ctx, tc.network, tc.addr)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			name, err := exchange(c, tc.network)
			if err != nil {
				t.Fatal(err)
			}
			if _, dup := tc.into[name]; dup {
				c.Close()
				continue
			}
			tc.into[name] = c
			t.Cleanup(func() { c.Close() })
		}
	}

	// pod-1 leaves both services.
	st, err := d.rec.Apply(lb.State{Services: []lb.Service{
		service(vip, 53, lb.UDP, "198.18.0.2:5353"), service(vip, 80, lb.TCP, "198.18.0.2:5353"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Departed) != 2 {
		t.Fatalf("departed = %v, want pod-1 from both frontends", st.Departed)
	}
	only := loader.DestroyOptions{NetnsPaths: []string{d.ns.Path()}}
	n, err := d.dp.DestroySockets(st.Departed, only)
	if err != nil || n != 1 {
		t.Fatalf("destroyed %d sockets (%v), want 1: the UDP one (TCP was not asked for)", n, err)
	}
	// The UDP client learns at once: its next receive or send fails.
	if _, err := exchange(udp["pod-1"], "udp4"); err == nil {
		t.Error("the UDP socket to the removed backend still works")
	} else {
		t.Logf("UDP socket to the removed backend: %v", err)
	}
	if name, err := exchange(udp["pod-2"], "udp4"); err != nil || name != "pod-2" {
		t.Errorf("the UDP socket to the remaining backend: %q, %v", name, err)
	}

	only.TCP = true
	n, err = d.dp.DestroySockets(st.Departed, only)
	if err != nil || n != 1 {
		t.Fatalf("with TCP: destroyed %d sockets (%v), want the TCP one", n, err)
	}
	// The name servers half-close after their greeting and read until
	// the client closes, so a write succeeds on a live socket only.
	_ = tcp["pod-1"].SetWriteDeadline(time.Now().Add(2 * time.Second))
	if _, err := tcp["pod-1"].Write([]byte("x")); !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNABORTED) {
		t.Errorf("write on the destroyed TCP socket: %v, want EPIPE or ECONNABORTED", err)
	}
	_ = tcp["pod-2"].SetWriteDeadline(time.Now().Add(2 * time.Second))
	if _, err := tcp["pod-2"].Write([]byte("x")); err != nil {
		t.Errorf("write on the TCP socket to the remaining backend: %v", err)
	}
	// A second pass finds nothing more: the marks are gone.
	if n, err := d.dp.DestroySockets(st.Departed, only); err != nil || n != 0 {
		t.Errorf("second pass destroyed %d (%v), want 0", n, err)
	}
}

// exchange sends on a UDP socket and reads one answer, or reads the
// greeting line of a TCP name server.
func exchange(c net.Conn, network string) (string, error) {
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 128)
	if strings.HasPrefix(network, "udp") {
		if _, err := c.Write([]byte("who")); err != nil {
			return "", err
		}
	}
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(buf[:n])), nil
}

// requireFeature stops the test unless the kernel has the feature, as
// the loader's probe found: a skip naming it in the kernel matrix's VMs,
// a failure elsewhere (sandbox.RequireFeature).
func requireFeature(t *testing.T, dp *loader.Datapath, name string) {
	t.Helper()
	for _, f := range dp.Features {
		if f.Name == name {
			sandbox.RequireFeature(t, f.Available, fmt.Sprintf("%s [>= %s]", f.Name, f.MinKernel), f.Detail)
			return
		}
	}
	t.Fatalf("the loader probes no feature %q", name)
}
