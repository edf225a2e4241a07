package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/socklb/socklb/pkg/netnsid"
)

// started is when the process began running Go code (package variables
// are set before main, right after the runtime's own start): the origin
// of firstconnect's times.
var started = time.Now()

// selfAnswer is what the pod's own listener on the VIP answers. A connect
// to VIP:port that gets it was not rewritten: with no kube-proxy on the
// node, only the pod's own network namespace can answer at the VIP, as a
// mesh sidecar's redirect target would.
const selfAnswer = "self"

// vipFlags are the flags of selfserve and firstconnect.
func vipFlags(fs *flag.FlagSet) (vip *string, port *int) {
	return fs.String("vip", "", "the Service's ClusterIP"), fs.Int("port", 80, "the Service's port")
}

// listenSelf puts vip/32 on the pod's loopback device (NET_ADMIN in the
// pod's own namespace) and serves "self" on vip:port in the background.
func listenSelf(vip string, port int) (net.Listener, error) {
	ip, err := netip.ParseAddr(vip)
	if err != nil || !ip.Is4() {
		return nil, fmt.Errorf("--vip %q: want an IPv4 address", vip)
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("find lo: %w", err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(32, 32)}}
	// EEXIST: the container was restarted in the same pod namespace.
	if err := netlink.AddrAdd(lo, addr); err != nil && !errors.Is(err, syscall.EEXIST) {
		return nil, fmt.Errorf("add %s/32 to lo: %w", vip, err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(vip, strconv.Itoa(port)))
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				io.WriteString(c, selfAnswer+"\n")
			}()
		}
	}()
	return ln, nil
}

func untilSIGTERM() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	<-ctx.Done()
}

// selfserve answers "self" on the VIP inside the pod until SIGTERM; the
// test then connects to the VIP from the pod with `connect`.
func selfserve(args []string) error {
	fs := flag.NewFlagSet("selfserve", flag.ContinueOnError)
	vip, port := vipFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := listenSelf(*vip, *port)
	if err != nil {
		return err
	}
	defer ln.Close()
	untilSIGTERM()
	return nil
}

// firstResult is what firstconnect prints: times are microseconds since
// the process started.
type firstResult struct {
	// StartedUnixUS is the process's start, Unix microseconds: to set
	// against when the agent wrote the pod's entry.
	StartedUnixUS int64 `json:"startedUnixUs"`
	SetupUS       int64 `json:"setupUs"` // the VIP on lo and the listener
	// First is the first attempt's result: "self" (untranslated),
	// "rewritten" (a backend answered) or "error: ...".
	First      string `json:"first"`
	FirstAtUS  int64  `json:"firstAtUs"`
	FirstReply string `json:"firstReply"`
	// FirstSelfAtUS is when the first "self" attempt began; -1 if none.
	FirstSelfAtUS int64 `json:"firstSelfAtUs"`
	// BeforeSelf counts the attempts before the first "self".
	BeforeSelf int `json:"beforeSelf"`
	// NotSelfAfter counts the attempts after the first "self" that did
	// not answer "self": the bypass must not flicker.
	NotSelfAfter int            `json:"notSelfAfter"`
	Attempts     int            `json:"attempts"`
	Results      map[string]int `json:"results"`
	StoppedBy    string         `json:"stoppedBy"` // "confirmed" or "deadline"
}

// firstconnect is a pod's first container: as its first action (after
// the listener it needs to tell "self" apart) it connects to the VIP in a
// loop, records when the first untranslated connect came, prints one JSON
// line and then keeps the pod running until SIGTERM.
func firstconnect(args []string) error {
	fs := flag.NewFlagSet("firstconnect", flag.ContinueOnError)
	vip, port := vipFlags(fs)
	deadline := fs.Duration("for", 10*time.Second, "give up this long after the start without a \"self\"")
	confirm := fs.Int("confirm", 50, "attempts to make after the first \"self\"")
	interval := fs.Duration("interval", time.Millisecond, "pause between attempts")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := listenSelf(*vip, *port)
	if err != nil {
		return err
	}
	defer ln.Close()
	r := firstResult{StartedUnixUS: started.UnixMicro(), SetupUS: time.Since(started).Microseconds(), FirstSelfAtUS: -1,
		Results: map[string]int{}}
	addr := net.JoinHostPort(*vip, strconv.Itoa(*port))
	for after := 0; ; {
		if after >= *confirm {
			r.StoppedBy = "confirmed"
			break
		}
		if time.Since(started) > *deadline {
			r.StoppedBy = "deadline"
			break
		}
		at := time.Since(started).Microseconds()
		reply, _, err := once(addr, 500*time.Millisecond)
		kind := "rewritten"
		switch {
		case err != nil:
			kind = "error: " + err.Error()
		case reply == selfAnswer:
			kind = selfAnswer
		}
		if r.Attempts == 0 {
			r.First, r.FirstAtUS, r.FirstReply = kind, at, reply
		}
		r.Attempts++
		r.Results[kind]++
		switch {
		case r.FirstSelfAtUS >= 0:
			after++
			if kind != selfAnswer {
				r.NotSelfAfter++
			}
		case kind == selfAnswer:
			r.FirstSelfAtUS = at
		default:
			r.BeforeSelf++
		}
		time.Sleep(*interval)
	}
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		return err
	}
	untilSIGTERM()
	return nil
}

// nscookie prints the cookie of the network namespace file at the path
// (e.g. /proc/PID/ns/net), as the agent reads it, or fails with the
// kernel's error: run with fewer capabilities, it shows what an agent
// with those may read.
func nscookie(args []string) error {
	if len(args) != 1 {
		return errors.New("nscookie: want one path")
	}
	c, err := netnsid.Cookie(args[0])
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]uint64{"cookie": c})
}
