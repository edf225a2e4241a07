package tests

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/socklb/socklb/pkg/filesource"
	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/maps"
	"github.com/socklb/socklb/pkg/reconciler"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// TestGoldenMapDumps runs each testdata/*.yaml (and the demo file) through
// the whole pipeline — decode, model, reconciler — into the fake maps, and
// compares what a program would find there with testdata/*.golden.
func TestGoldenMapDumps(t *testing.T) {
	inputs, _ := filepath.Glob("testdata/*.yaml")
	inputs = append(inputs, "../examples/demo.yaml")
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".yaml")
		t.Run(name, func(t *testing.T) {
			f, err := os.Open(in)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			input, docErrs := filesource.Decode(f)
			state, warnings := lb.Compute(input)
			fake := maps.NewFake()
			if _, err := reconciler.New(fake, nil).Apply(state); err != nil {
				t.Fatal(err)
			}
			// The dump lists backends by id; a program reads the copy
			// in each slot, which must be the same backend.
			if err := fake.CheckConsistent(); err != nil {
				t.Fatal(err)
			}
			got := dump(t, fake, docErrs, warnings)
			golden := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("map dump differs from %s:\n--- got\n%s--- want\n%s", golden, got, want)
			}
		})
	}
}

func dump(t *testing.T, f *maps.Fake, docErrs []error, warnings []lb.Warning) string {
	t.Helper()
	var b strings.Builder
	svcs, err := f.Services()
	if err != nil {
		t.Fatal(err)
	}
	bes, err := f.Backends()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range svcs {
		fmt.Fprintf(&b, "frontend %s id=%d name=%s\n", s.Frontend, s.RevNATID, s.Name)
		if len(s.Backends) == 0 {
			b.WriteString("  refuse\n")
		}
		for _, id := range s.Backends {
			fmt.Fprintf(&b, "  backend %d %s\n", id, bes[id])
		}
	}
	for _, e := range docErrs {
		fmt.Fprintf(&b, "skipped %v\n", e)
	}
	for _, w := range warnings {
		fmt.Fprintf(&b, "warning %s: %s\n", w.Object, w.Reason)
	}
	return b.String()
}
