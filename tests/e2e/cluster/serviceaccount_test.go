package cluster_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/socklb/socklb/tests/e2e/cluster"
)

func TestDecodeManifest(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		kinds      []string // %T of each object
		err        string
	}{
		{
			name: "typed objects, comment-only and empty documents skipped",
			yaml: "# a comment\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a, namespace: kube-system}\n" +
				"---\n# only a comment\n---\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: r}\n" +
				"rules: [{apiGroups: [\"\"], resources: [services], verbs: [list]}]\n",
			kinds: []string{"*v1.ServiceAccount", "*v1.ClusterRole"},
		},
		{
			// A typo must not silently grant less.
			name: "unknown field",
			yaml: "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: r}\n" +
				"rules: [{apiGroups: [\"\"], resource: [services], verbs: [list]}]\n",
			err: `unknown field "rules[0].resource"`,
		},
		{
			name: "unknown kind",
			yaml: "apiVersion: example.com/v1\nkind: Thing\nmetadata: {name: t}\n",
			err:  "no kind \"Thing\" is registered",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "m.yaml")
			if err := os.WriteFile(path, []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			objs, err := cluster.DecodeManifest(path)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("DecodeManifest: %v, want an error with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var kinds []string
			for _, o := range objs {
				kinds = append(kinds, fmt.Sprintf("%T", o))
			}
			if !slices.Equal(kinds, tc.kinds) {
				t.Fatalf("objects %v, want %v", kinds, tc.kinds)
			}
			if sa, ok := objs[0].(*corev1.ServiceAccount); !ok || sa.Name != "a" || sa.Namespace != "kube-system" {
				t.Errorf("first object %#v", objs[0])
			}
			if r, ok := objs[1].(*rbacv1.ClusterRole); !ok || len(r.Rules) != 1 || r.Rules[0].Resources[0] != "services" {
				t.Errorf("second object %#v", objs[1])
			}
		})
	}
}

// TestDecodeManifestDeployRBAC: deploy/rbac.yaml, which every scenario
// applies, decodes to the three objects the agent's identity needs.
func TestDecodeManifestDeployRBAC(t *testing.T) {
	objs, err := cluster.DecodeManifest("../../../deploy/rbac.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, fmt.Sprintf("%T", o))
	}
	if want := []string{"*v1.ServiceAccount", "*v1.ClusterRole", "*v1.ClusterRoleBinding"}; !slices.Equal(kinds, want) {
		t.Errorf("deploy/rbac.yaml holds %v, want %v", kinds, want)
	}
}
