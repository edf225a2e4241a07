package kubebuild

import (
	"context"
	"encoding/json"
	"os/exec"
	"slices"
	"testing"
)

// TestEveryBinaryIsATool: each package the two sets build is a `tool` of
// the kubebin module (so go.sum covers it and `go build` may build it with
// -mod=readonly), and the module requires the Kubernetes release the
// version flags name.
func TestEveryBinaryIsATool(t *testing.T) {
	ctx := context.Background()
	dir, err := ModuleDir(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, "go", "mod", "edit", "-json")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go mod edit -json in %s: %v", dir, err)
	}
	var mod struct {
		Require []struct{ Path, Version string }
		Tool    []struct{ Path string }
	}
	if err := json.Unmarshal(out, &mod); err != nil {
		t.Fatal(err)
	}
	var tools []string
	for _, tl := range mod.Tool {
		tools = append(tools, tl.Path)
	}
	for _, p := range append(slices.Clone(controlPlane), node...) {
		if !slices.Contains(tools, p.Path) {
			t.Errorf("%s (%s) is not a tool of %s/go.mod: add it to gen's tools and run go generate", p.Path, p.Name, dir)
		}
	}
	found := false
	for _, r := range mod.Require {
		if r.Path == "k8s.io/kubernetes" {
			found = true
			if r.Version != KubernetesVersion {
				t.Errorf("kubebin requires k8s.io/kubernetes %s, KubernetesVersion is %s", r.Version, KubernetesVersion)
			}
		}
	}
	if !found {
		t.Errorf("kubebin does not require k8s.io/kubernetes")
	}
}
