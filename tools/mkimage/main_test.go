package main

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
)

// TestDaemonSetsRunThisImage keeps the DaemonSets under deploy/ and
// `make image` in step: each names an image this tool tags, uses the
// image's entrypoint, and never pulls what no registry has.
func TestDaemonSetsRunThisImage(t *testing.T) {
	var want []string
	for _, tag := range strings.Split(extraTags, ",") {
		want = append(want, imageName+":"+tag)
	}
	files, err := filepath.Glob("../../deploy/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	more, err := filepath.Glob("../../deploy/*/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, file := range append(files, more...) {
		for _, ds := range daemonSets(t, file) {
			found++
			cs := ds.Spec.Template.Spec.Containers
			if len(cs) != 1 {
				t.Errorf("%s: %d containers, want 1", file, len(cs))
				continue
			}
			c := cs[0]
			if !slices.Contains(want, c.Image) {
				t.Errorf("%s: image %q, want one of %q", file, c.Image, want)
			}
			if c.ImagePullPolicy != "IfNotPresent" {
				t.Errorf("%s: imagePullPolicy %q, want IfNotPresent", file, c.ImagePullPolicy)
			}
			if len(c.Command) != 0 {
				t.Errorf("%s: command %q overrides the image's entrypoint", file, c.Command)
			}
			if len(c.Args) == 0 || c.Args[0] != "run" {
				t.Errorf("%s: args %q, want run first", file, c.Args)
			}
		}
	}
	if found == 0 {
		t.Fatal("no DaemonSet found under deploy/")
	}
	t.Logf("%d DaemonSets checked", found)
}

// daemonSets decodes the DaemonSets among the documents of file.
func daemonSets(t *testing.T, file string) []appsv1.DaemonSet {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []appsv1.DaemonSet
	dec := yaml.NewYAMLOrJSONDecoder(f, 4096)
	for {
		var ds appsv1.DaemonSet
		err := dec.Decode(&ds)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("decode %s: %v", file, err)
		}
		if ds.Kind == "DaemonSet" {
			out = append(out, ds)
		}
	}
}
