package scenarios

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"github.com/socklb/socklb/internal/sandbox"
	"github.com/socklb/socklb/pkg/loader"
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
	// Variants live one level down, so that `kubectl apply -f deploy/`
	// applies only the default ones.
	variants, _ := filepath.Glob("../../../deploy/*/*.yaml")
	if len(files) == 0 || len(variants) == 0 {
		t.Fatalf("manifests under deploy/: %v, variants: %v", files, variants)
	}
	files = append(files, variants...)
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
				t.Errorf("%s: server-side dry-run apply of %s %s/%s: %v", f, gvk.Kind, obj.GetNamespace(), obj.GetName(), err)
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

// TestDeployCapabilitiesMatchAgent: the unprivileged DaemonSet of deploy/
// grants exactly the capabilities the agent checks for at start
// (loader.RequiredCapabilities, which tests/caps_test.go measures), and
// the default one stays privileged.
func TestDeployCapabilitiesMatchAgent(t *testing.T) {
	var want []string
	for _, c := range loader.RequiredCapabilities {
		want = append(want, strings.TrimPrefix(c.Name, "CAP_"))
	}
	slices.Sort(want)
	for _, tc := range []struct {
		file       string
		privileged bool
	}{
		{"../../../deploy/daemonset.yaml", true},
		{"../../../deploy/capabilities/daemonset.yaml", false},
	} {
		objs, err := cluster.DecodeManifest(tc.file)
		if err != nil {
			t.Fatal(err)
		}
		if len(objs) != 1 {
			t.Fatalf("%s: %d objects, want one DaemonSet", tc.file, len(objs))
		}
		ds, ok := objs[0].(*appsv1.DaemonSet)
		if !ok || len(ds.Spec.Template.Spec.Containers) != 1 {
			t.Fatalf("%s: want a DaemonSet with one container, got %T", tc.file, objs[0])
		}
		sc := ds.Spec.Template.Spec.Containers[0].SecurityContext
		if sc == nil {
			t.Fatalf("%s: no securityContext", tc.file)
		}
		if got := sc.Privileged != nil && *sc.Privileged; got != tc.privileged {
			t.Errorf("%s: privileged %v, want %v", tc.file, got, tc.privileged)
		}
		if tc.privileged {
			continue
		}
		if sc.Capabilities == nil {
			t.Fatalf("%s: no capabilities", tc.file)
		}
		var add []string
		for _, c := range sc.Capabilities.Add {
			add = append(add, string(c))
		}
		slices.Sort(add)
		if !slices.Equal(add, want) {
			t.Errorf("%s: adds capabilities %v, the agent needs %v", tc.file, add, want)
		}
		if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			t.Errorf("%s: drops %v, want [ALL]", tc.file, sc.Capabilities.Drop)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("%s: allowPrivilegeEscalation is not false", tc.file)
		}
	}
}
