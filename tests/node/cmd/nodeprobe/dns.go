package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// dnsResult is what dns prints.
type dnsResult struct {
	Mode   string `json:"mode"`
	Server string `json:"server"`
	// From is the answer's source address for udp-sendto (recvfrom's)
	// and the socket's peer (getpeername) for udp-connected and tcp,
	// whose sockets take data from their peer only.
	From    string   `json:"from"`
	Name    string   `json:"name"`
	Answers []string `json:"answers"`
	RCode   string   `json:"rcode"`
}

// dnsQuery sends one A query for --name to the nameserver (resolv.conf's
// first unless --server) in one of three ways and checks the answer the
// way a stub resolver does:
//
//   - udp-connected: connect(2) then send and recv, as Go's and glibc's
//     resolvers do; the kernel delivers only datagrams from the connected
//     address.
//   - udp-sendto: an unconnected socket, sendto(2) and recvfrom(2), as
//     musl's resolver does; the answer is accepted only if its source
//     address is the nameserver's (musl drops any other).
//   - tcp: a length-prefixed query over TCP (RFC 1035 4.2.2).
func dnsQuery(args []string) error {
	fs := flag.NewFlagSet("dns", flag.ContinueOnError)
	mode := fs.String("mode", "udp-connected", "udp-connected, udp-sendto or tcp")
	name := fs.String("name", "", "a fully qualified name")
	server := fs.String("server", "", "nameserver IP (default: resolv.conf's first)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *name == "" {
		return errors.New("dns: --name is required")
	}
	if *server == "" {
		s, err := firstNameserver("/etc/resolv.conf")
		if err != nil {
			return err
		}
		*server = s
	}
	ip, err := netip.ParseAddr(*server)
	if err != nil {
		return fmt.Errorf("dns: --server: %w", err)
	}
	ns := netip.AddrPortFrom(ip, 53)
	fqdn := *name
	if !strings.HasSuffix(fqdn, ".") {
		fqdn += "."
	}
	id := uint16(time.Now().UnixNano())
	query, err := buildQuery(id, fqdn)
	if err != nil {
		return err
	}
	var reply []byte
	var from string
	switch *mode {
	case "udp-connected":
		reply, from, err = udpConnected(ns, query)
	case "udp-sendto":
		reply, from, err = udpSendto(ns, query)
	case "tcp":
		reply, from, err = tcpQuery(ns, query)
	default:
		return fmt.Errorf("dns: unknown --mode %q", *mode)
	}
	if err != nil {
		return fmt.Errorf("dns %s to %s: %w", *mode, ns, err)
	}
	res := dnsResult{Mode: *mode, Server: ns.String(), From: from, Name: fqdn}
	if res.Answers, res.RCode, err = parseAnswer(reply, id); err != nil {
		return fmt.Errorf("dns %s to %s: %w", *mode, ns, err)
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func buildQuery(id uint16, fqdn string) ([]byte, error) {
	n, err := dnsmessage.NewName(fqdn)
	if err != nil {
		return nil, err
	}
	msg := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: id, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: n, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}},
	}
	return msg.Pack()
}

// parseAnswer checks the reply's ID and returns its A records.
func parseAnswer(b []byte, id uint16) ([]string, string, error) {
	var msg dnsmessage.Message
	if err := msg.Unpack(b); err != nil {
		return nil, "", fmt.Errorf("unpack answer: %w", err)
	}
	if msg.ID != id || !msg.Response {
		return nil, "", fmt.Errorf("answer id %d response %v, want id %d", msg.ID, msg.Response, id)
	}
	var out []string
	for _, a := range msg.Answers {
		if r, ok := a.Body.(*dnsmessage.AResource); ok {
			out = append(out, netip.AddrFrom4(r.A).String())
		}
	}
	return out, msg.RCode.String(), nil
}

func udpConnected(ns netip.AddrPort, q []byte) ([]byte, string, error) {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(ns))
	if err != nil {
		return nil, "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write(q); err != nil {
		return nil, "", err
	}
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		return nil, "", err
	}
	return buf[:n], c.RemoteAddr().String(), nil
}

func udpSendto(ns netip.AddrPort, q []byte) ([]byte, string, error) {
	// A socket of the nameserver's family, as musl opens for an IPv4
	// nameserver (AF_INET): a dual-stack socket would take the IPv6
	// hooks with a v4-mapped address instead.
	network := "udp4"
	if !ns.Addr().Is4() {
		network = "udp6"
	}
	c, err := net.ListenUDP(network, nil)
	if err != nil {
		return nil, "", err
	}
	defer c.Close()
	deadline := time.Now().Add(3 * time.Second)
	c.SetDeadline(deadline)
	if _, err := c.WriteToUDPAddrPort(q, ns); err != nil {
		return nil, "", err
	}
	buf := make([]byte, 4096)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return nil, "", err
		}
		// musl's rule: a datagram from any other address is not the
		// answer; drop it and wait on.
		if from == ns {
			return buf[:n], from.String(), nil
		}
		fmt.Fprintf(os.Stderr, "nodeprobe: dropped a datagram from %s (not the nameserver %s)\n", from, ns)
	}
}

func tcpQuery(ns netip.AddrPort, q []byte) ([]byte, string, error) {
	c, err := net.DialTimeout("tcp", ns.String(), 3*time.Second)
	if err != nil {
		return nil, "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	framed := binary.BigEndian.AppendUint16(nil, uint16(len(q)))
	if _, err := c.Write(append(framed, q...)); err != nil {
		return nil, "", err
	}
	var size [2]byte
	if _, err := io.ReadFull(c, size[:]); err != nil {
		return nil, "", err
	}
	buf := make([]byte, binary.BigEndian.Uint16(size[:]))
	if _, err := io.ReadFull(c, buf); err != nil {
		return nil, "", err
	}
	return buf, c.RemoteAddr().String(), nil
}

func firstNameserver(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "nameserver" {
			return f[1], nil
		}
	}
	return "", fmt.Errorf("%s: no nameserver", path)
}
