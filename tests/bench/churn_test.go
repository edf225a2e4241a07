package main

import (
	"strings"
	"testing"
)

func TestParseCPUSeconds(t *testing.T) {
	// Field 2 may hold spaces and parentheses; utime, stime, cutime and
	// cstime are fields 14 to 17.
	line := "4242 (kube (proxy) x) S 1 4242 4242 0 -1 4194560 9000 0 0 0 " +
		"1234 566 100 100 20 0 12 0 555 1000000 300 18446744073709551615"
	got, err := parseCPUSeconds(line)
	if err != nil || got != 20 {
		t.Errorf("parseCPUSeconds = %v, %v; want 20 (2000 ticks)", got, err)
	}
	for _, bad := range []string{"", "12 (x) S 1 2", strings.Replace(line, "566", "x", 1)} {
		if _, err := parseCPUSeconds(bad); err == nil {
			t.Errorf("parseCPUSeconds(%q) succeeded", bad)
		}
	}
}

func TestClusterIPsStayInTheRanges(t *testing.T) {
	for _, tc := range []struct {
		i    int
		want string
	}{
		{0, "198.19.0.2"}, {253, "198.19.0.255"}, {254, "198.19.1.0"}, {65532, "198.19.255.254"},
		{65533, "198.18.128.1"}, {65533 + 32765, "198.18.255.254"},
		{65533 + 32766, "198.18.64.1"}, {65533 + 32766 + 16381, "198.18.127.254"},
		{65533 + 32766 + 16382, ""},
	} {
		if got := clusterIP(tc.i); got != tc.want {
			t.Errorf("clusterIP(%d) = %q, want %q", tc.i, got, tc.want)
		}
	}
}
