// Command nodeprobe is the program of the node tests' pods (the image
// tests/node/e2e builds): a server that names its pod, and the clients
// that connect to Services and query cluster DNS from inside pods, where
// socklb balances them. Every client prints one JSON object on stdout.
//
//	nodeprobe serve [--port 8080] [--linger 0]  TCP: write the pod's name, close
//	nodeprobe idle                              sleep until SIGTERM (client pods)
//	nodeprobe connect --addr web:80 [--count 300 | --duration 20s] [--interval 0]
//	          [--timeout 2s] [--stop-file PATH] [--timeline]
//	nodeprobe touch PATH                     create PATH (ends a connect loop)
//	nodeprobe resolve NAME...                Go's resolver (connected UDP)
//	nodeprobe dns --mode udp-connected|udp-sendto|tcp --name NAME [--server IP]
//	nodeprobe selfserve --vip IP [--port 80]  answer "self" on the VIP in the pod (NET_ADMIN)
//	nodeprobe firstconnect --vip IP [--port 80] [--for 10s] [--confirm 50]
//	                                         the same, then connect to it from the start
//	nodeprobe nscookie PATH                  a network namespace file's cookie
//
// It is built static (CGO off): the image holds this file alone.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: nodeprobe serve|idle|connect|touch|resolve|dns|selfserve|firstconnect|nscookie [flags]")
		os.Exit(2)
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "serve":
		err = serve(args)
	case "idle":
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		defer stop()
		<-ctx.Done()
	case "connect":
		err = connect(args)
	case "touch":
		err = touch(args)
	case "resolve":
		err = resolve(args)
	case "dns":
		err = dnsQuery(args)
	case "selfserve":
		err = selfserve(args)
	case "firstconnect":
		err = firstconnect(args)
	case "nscookie":
		err = nscookie(args)
	default:
		err = fmt.Errorf("unknown command %q", cmd)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "nodeprobe:", err)
		os.Exit(1)
	}
}

// serve answers every TCP connection with the pod's name (its hostname)
// and a newline, then closes it. On SIGTERM it keeps serving for
// --linger, as a server draining its connections does, then exits.
func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	port := fs.Int("port", 8080, "TCP port")
	linger := fs.Duration("linger", 0, "keep serving this long after SIGTERM")
	if err := fs.Parse(args); err != nil {
		return err
	}
	name, err := os.Hostname()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", fmt.Sprintf(":%d", *port))
	if err != nil {
		return err
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
				io.WriteString(c, name+"\n")
			}()
		}
	}()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	<-ctx.Done()
	time.Sleep(*linger)
	return ln.Close()
}

// connectResult is what connect prints.
type connectResult struct {
	Connects int            `json:"connects"`
	Failed   int            `json:"failed"`
	Backends map[string]int `json:"backends"` // pod name → replies
	Peers    map[string]int `json:"peers"`    // getpeername → connects
	Errors   map[string]int `json:"errors"`   // error text → count
	Took     string         `json:"took"`
	// StoppedBy says what ended the loop: "count", "duration" or
	// "stop-file".
	StoppedBy string `json:"stoppedBy"`
	// Timeline, with --timeline: every connect's start (Unix ms) and
	// the pod that answered, or "error: ...".
	Timeline []event `json:"timeline,omitempty"`
}

type event struct {
	At     int64  `json:"at"`
	Result string `json:"result"`
}

// connect dials addr --count times (or for --duration), reads the pod
// name each reply carries and counts where it went; the peer address is
// the socket's getpeername, as Go records it after connect.
func connect(args []string) error {
	fs := flag.NewFlagSet("connect", flag.ContinueOnError)
	addr := fs.String("addr", "", "host:port")
	count := fs.Int("count", 0, "connects to make")
	duration := fs.Duration("duration", 0, "connect for this long instead of --count times")
	interval := fs.Duration("interval", 0, "pause between connects")
	timeout := fs.Duration("timeout", 2*time.Second, "each connect's and read's timeout")
	stopFile := fs.String("stop-file", "", "end the loop early once this file exists")
	timeline := fs.Bool("timeline", false, "record every connect")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *addr == "" || (*count <= 0) == (*duration <= 0) {
		return errors.New("connect: want --addr and one of --count or --duration")
	}
	r := connectResult{Backends: map[string]int{}, Peers: map[string]int{}, Errors: map[string]int{}}
	start := time.Now()
	for i := 0; ; i++ {
		if *count > 0 && i >= *count {
			r.StoppedBy = "count"
			break
		}
		if *duration > 0 && time.Since(start) >= *duration {
			r.StoppedBy = "duration"
			break
		}
		if *stopFile != "" {
			if _, err := os.Stat(*stopFile); err == nil {
				r.StoppedBy = "stop-file"
				break
			}
		}
		r.Connects++
		at := time.Now().UnixMilli()
		name, peer, err := once(*addr, *timeout)
		if peer != "" {
			r.Peers[peer]++
		}
		result := name
		if err != nil {
			r.Failed++
			r.Errors[err.Error()]++
			result = "error: " + err.Error()
		} else {
			r.Backends[name]++
		}
		if *timeline {
			r.Timeline = append(r.Timeline, event{At: at, Result: result})
		}
		time.Sleep(*interval)
	}
	r.Took = time.Since(start).Round(time.Millisecond).String()
	return json.NewEncoder(os.Stdout).Encode(r)
}

func once(addr string, timeout time.Duration) (name, peer string, err error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	peer = c.RemoteAddr().String()
	c.SetDeadline(time.Now().Add(timeout))
	b, err := io.ReadAll(io.LimitReader(c, 256))
	if err != nil {
		return "", peer, err
	}
	name = strings.TrimSpace(string(b))
	if name == "" {
		return "", peer, errors.New("empty reply")
	}
	return name, peer, nil
}

func touch(args []string) error {
	if len(args) != 1 {
		return errors.New("touch: want one path")
	}
	if err := os.MkdirAll(filepath.Dir(args[0]), 0o755); err != nil {
		return err
	}
	return os.WriteFile(args[0], nil, 0o644)
}

// resolve looks each name up with Go's own resolver (resolv.conf's
// search list and nameserver, a connected UDP socket per query) and
// prints name → addresses.
func resolve(args []string) error {
	r := &net.Resolver{PreferGo: true}
	out := map[string][]string{}
	var errs []error
	for _, name := range args {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		addrs, err := r.LookupHost(ctx, name)
		cancel()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out[name] = addrs
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		return err
	}
	return errors.Join(errs...)
}
