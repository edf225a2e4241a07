package main

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// answer makes the reply to query q with one A record; nil when q is
// not a query (the fake servers then send nothing, and the test fails).
func answer(q []byte, a [4]byte) []byte {
	var m dnsmessage.Message
	if err := m.Unpack(q); err != nil || len(m.Questions) == 0 {
		return nil
	}
	m.Response = true
	m.Answers = []dnsmessage.Resource{{
		Header: dnsmessage.ResourceHeader{Name: m.Questions[0].Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 5},
		Body:   &dnsmessage.AResource{A: a},
	}}
	b, err := m.Pack()
	if err != nil {
		return nil
	}
	return b
}

// TestUDPSendtoDropsStrangers: a datagram from another address than the
// nameserver's is dropped, the nameserver's own answer is taken, as
// musl's resolver does.
func TestUDPSendtoDropsStrangers(t *testing.T) {
	server, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	stranger, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	go func() {
		buf := make([]byte, 512)
		n, from, err := server.ReadFromUDP(buf)
		if err != nil {
			return
		}
		stranger.WriteToUDP(answer(buf[:n], [4]byte{6, 6, 6, 6}), from)
		server.WriteToUDP(answer(buf[:n], [4]byte{198, 19, 0, 7}), from)
	}()
	q, err := buildQuery(42, "web.demo.svc.cluster.local.")
	if err != nil {
		t.Fatal(err)
	}
	ns := server.LocalAddr().(*net.UDPAddr).AddrPort()
	reply, from, err := udpSendto(ns, q)
	if err != nil {
		t.Fatal(err)
	}
	got, rcode, err := parseAnswer(reply, 42)
	if err != nil || from != ns.String() || rcode != "RCodeSuccess" || !slices.Equal(got, []string{"198.19.0.7"}) {
		t.Errorf("answer %v %s from %s (%v), want [198.19.0.7] from %s", got, rcode, from, err, ns)
	}
}

// TestTCPQueryFraming: the query and the answer carry RFC 1035's
// two-byte length prefix.
func TestTCPQueryFraming(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var size [2]byte
		if _, err := io.ReadFull(c, size[:]); err != nil {
			return
		}
		q := make([]byte, binary.BigEndian.Uint16(size[:]))
		if _, err := io.ReadFull(c, q); err != nil {
			return
		}
		a := answer(q, [4]byte{198, 19, 0, 8})
		c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(a))), a...))
	}()
	q, err := buildQuery(7, "kube-dns.kube-system.svc.cluster.local.")
	if err != nil {
		t.Fatal(err)
	}
	reply, _, err := tcpQuery(netip.MustParseAddrPort(ln.Addr().String()), q)
	if err != nil {
		t.Fatal(err)
	}
	if got, _, err := parseAnswer(reply, 7); err != nil || !slices.Equal(got, []string{"198.19.0.8"}) {
		t.Errorf("answer %v (%v), want [198.19.0.8]", got, err)
	}
	if _, _, err := parseAnswer(reply, 8); err == nil {
		t.Error("an answer with another ID was accepted")
	}
}

func TestFirstNameserver(t *testing.T) {
	f := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(f, []byte("search demo.svc.cluster.local svc.cluster.local\nnameserver 198.19.0.10\nnameserver 192.0.2.1\noptions ndots:5\n"), 0o644)
	if got, err := firstNameserver(f); err != nil || got != "198.19.0.10" {
		t.Errorf("firstNameserver = %q, %v", got, err)
	}
	os.WriteFile(f, []byte("search x\n"), 0o644)
	if _, err := firstNameserver(f); err == nil {
		t.Error("a resolv.conf without a nameserver was accepted")
	}
}
