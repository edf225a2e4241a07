package main

import (
	"slices"
	"testing"
)

func TestParseKernels(t *testing.T) {
	got, err := parseKernels("6.1=linux-image-cloud-amd64, 6.12=linux-image-6.12-cloud-amd64,")
	want := []kernelFlag{{"6.1", "linux-image-cloud-amd64"}, {"6.12", "linux-image-6.12-cloud-amd64"}}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("parseKernels = %v, %v; want %v", got, err, want)
	}
	for _, bad := range []string{"6.1", "=pkg", "6.1="} {
		if _, err := parseKernels(bad); err == nil {
			t.Errorf("parseKernels(%q) accepted", bad)
		}
	}
}

func TestExcluded(t *testing.T) {
	ex := []string{"tests/e2e/", "tests/bench/"}
	for rel, want := range map[string]bool{
		"tests/e2e":             true,
		"tests/e2e/scenarios":   true,
		"tests/bench/kubeproxy": true,
		"tests":                 false,
		"tests/e2effect":        false,
		"pkg/loader":            false,
	} {
		if got := excluded(rel, ex); got != want {
			t.Errorf("excluded(%q) = %v, want %v", rel, got, want)
		}
	}
}
