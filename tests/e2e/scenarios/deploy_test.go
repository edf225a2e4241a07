package scenarios

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"github.com/socklb/socklb/internal/sandbox"
	"github.com/socklb/socklb/tests/e2e/cluster"
)

// TestPrivilegedDeployManifestsApply applies every object of deploy/ to
// the real API server with server-side apply in dry-run mode: the server
// validates them completely and stores nothing.
func TestPrivilegedDeployManifestsApply(t *testing.T) {
	sandbox.RequirePrivileges(t)
	c := cluster.Start(t)
	dyn, err := dynamic.NewForConfig(c.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	disco, err := discovery.NewDiscoveryClientForConfig(c.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disco))

	files, _ := filepath.Glob("../../../deploy/*.yaml")
	if len(files) == 0 {
		t.Fatal("no manifests under deploy/")
	}
	kinds := map[string]bool{}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
		for {
			var obj unstructured.Unstructured
			if err := dec.Decode(&obj.Object); err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				t.Fatalf("%s: %v", f, err)
			}
			if obj.Object == nil {
				continue
			}
			gvk := obj.GroupVersionKind()
			m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
			if err != nil {
				t.Fatalf("%s: %s: %v", f, gvk, err)
			}
			res := dyn.Resource(m.Resource).Namespace(obj.GetNamespace())
			if m.Scope.Name() != "namespace" {
				res = dyn.Resource(m.Resource)
			}
			_, err = res.Apply(ctxFor(t), obj.GetName(), &obj, metav1.ApplyOptions{
				FieldManager: "socklb-e2e", DryRun: []string{metav1.DryRunAll},
			})
			if err != nil {
				t.Errorf("%s: server-side dry-run apply of %s %s/%s: %v", filepath.Base(f), gvk.Kind, obj.GetNamespace(), obj.GetName(), err)
				continue
			}
			kinds[gvk.Kind] = true
		}
	}
	for _, k := range []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"} {
		if !kinds[k] {
			t.Errorf("deploy/ has no valid %s", k)
		}
	}
}
