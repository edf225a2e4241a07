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
