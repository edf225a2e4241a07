package scenarios

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/socklb/socklb/tests/e2e/cluster"
)

// rbacManifest is deploy/'s ServiceAccount, ClusterRole and binding.
const rbacManifest = "../../../deploy/rbac.yaml"

// useAgentServiceAccount applies deploy/rbac.yaml to the cluster for real
// and gives every agent of this test a kubeconfig with a token of its
// ServiceAccount: the API server authorizes with RBAC, so the suite passes
// only if deploy/'s ClusterRole grants all the agent uses. It first
// proves the token is that ServiceAccount's and nothing more, so that an
// admin token slipping in cannot go unnoticed.
func (e *env) useAgentServiceAccount(t *testing.T) {
	t.Helper()
	var sa *corev1.ServiceAccount
	for _, obj := range e.c.ApplyManifest(t, rbacManifest) {
		if s, ok := obj.(*corev1.ServiceAccount); ok {
			if sa != nil {
				t.Fatalf("%s has two ServiceAccounts", rbacManifest)
			}
			sa = s
		}
	}
	if sa == nil {
		t.Fatalf("%s has no ServiceAccount", rbacManifest)
	}
	e.agentToken = e.c.ServiceAccountToken(t, sa.Namespace, sa.Name)
	user := cluster.ServiceAccountUser(sa.Namespace, sa.Name)
	// The API server's RBAC authorizer learns of the new binding through
	// its informers, a moment after the create.
	cluster.WaitFor(t, "the agent's token has exactly deploy/'s role", waitLong, func(context.Context) (bool, error) {
		problems := agentRoleProblems(t, e.c, e.agentToken, user)
		return len(problems) == 0, errors.New(strings.Join(problems, "; "))
	})
	e.agentKubeconfig = e.c.WriteKubeconfig(t, user, e.agentToken)
}

// access is one request the agent's role must allow or refuse.
type access struct {
	verb, group, resource, ns string
}

// agentNeeds is what the agent does with the API (pkg/k8swatch: informers
// on Services, EndpointSlices and its own Node, and for the bypass on its
// node's Pods and the Namespaces). Nothing else is allowed.
var agentNeeds = []access{
	{"list", "", "services", ""},
	{"watch", "", "services", ""},
	{"list", "discovery.k8s.io", "endpointslices", ""},
	{"watch", "discovery.k8s.io", "endpointslices", ""},
	{"list", "", "nodes", ""},
	{"watch", "", "nodes", ""},
	{"list", "", "pods", ""},
	{"watch", "", "pods", ""},
	{"list", "", "namespaces", ""},
	{"watch", "", "namespaces", ""},
}

// agentMustNot are requests an over-broad role would allow: reading
// secrets, any write, and get (the informers never get).
var agentMustNot = []access{
	{"get", "", "secrets", "kube-system"},
	{"list", "", "secrets", ""},
	{"list", "", "configmaps", "kube-system"},
	{"get", "", "pods", testNS},
	{"get", "", "namespaces", ""},
	{"list", "", "pods/log", testNS},
	{"create", "", "pods/exec", testNS},
	{"get", "", "services", testNS},
	{"get", "discovery.k8s.io", "endpointslices", testNS},
	{"get", "", "nodes", ""},
	{"create", "", "services", testNS},
	{"update", "", "services", testNS},
	{"patch", "", "services", testNS},
	{"delete", "", "services", testNS},
	{"create", "discovery.k8s.io", "endpointslices", testNS},
	{"update", "", "nodes", ""},
	{"patch", "", "nodes", ""},
	{"create", "", "serviceaccounts/token", "kube-system"},
	{"create", "", "pods", testNS},
	{"create", "rbac.authorization.k8s.io", "clusterrolebindings", ""},
	{"impersonate", "", "users", ""},
}

// agentRoleProblems asks the API server who token is and what it may do,
// and returns what is wrong: another user, a request of agentNeeds
// refused, one of agentMustNot allowed; then the same with real requests.
func agentRoleProblems(t *testing.T, c *cluster.Cluster, token, user string) []string {
	t.Helper()
	var problems []string
	if got := c.WhoAmI(t, token).Username; got != user {
		problems = append(problems, fmt.Sprintf("the token authenticates as %q, want %q", got, user))
	}
	client := c.ClientFor(t, token)
	ctx := t.Context()
	allowed := func(a access) bool {
		r, err := client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: a.verb, Group: a.group, Resource: a.resource, Namespace: a.ns,
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("access review %+v: %v", a, err)
		}
		return r.Status.Allowed
	}
	for _, a := range agentNeeds {
		if !allowed(a) {
			problems = append(problems, fmt.Sprintf("refused: %s %s (group %q)", a.verb, a.resource, a.group))
		}
	}
	for _, a := range agentMustNot {
		if allowed(a) {
			problems = append(problems, fmt.Sprintf("allowed: %s %s (group %q, namespace %q)", a.verb, a.resource, a.group, a.ns))
		}
	}

	if _, err := client.CoreV1().Services("").List(ctx, metav1.ListOptions{Limit: 1}); err != nil {
		problems = append(problems, fmt.Sprintf("list services: %v", err))
	}
	if _, err := client.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		problems = append(problems, fmt.Sprintf("list secrets: %v, want forbidden", err))
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: "forbidden"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
	}
	_, err := client.CoreV1().Services(testNS).Create(ctx, svc, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if !apierrors.IsForbidden(err) {
		problems = append(problems, fmt.Sprintf("create a service (dry run): %v, want forbidden", err))
	}
	return problems
}

// TestPrivilegedAgentRoleCheckCanFail shows that the check every scenario
// runs on the agent's token fails for an admin token and for a
// ServiceAccount with deploy/'s role and one rule more.
func TestPrivilegedAgentRoleCheckCanFail(t *testing.T) {
	e := newEnv(t)
	if e.agentToken == "" || e.agentToken == e.c.AdminToken || e.agentKubeconfig == e.c.Kubeconfig {
		t.Fatal("the agent runs without a ServiceAccount token of its own")
	}

	// deploy/'s role, and also the right to read secrets.
	ctx := t.Context()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: "broad"}}
	reader := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "secret-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get", "list"}}},
	}
	subject := []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: testNS, Name: "broad"}}
	bind := func(role string) *rbacv1.ClusterRoleBinding {
		return &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "broad-" + role},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
			Subjects:   subject,
		}
	}
	if _, err := e.c.Client.CoreV1().ServiceAccounts(testNS).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Client.RbacV1().ClusterRoles().Create(ctx, reader, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, role := range []string{"socklb-agent", "secret-reader"} {
		if _, err := e.c.Client.RbacV1().ClusterRoleBindings().Create(ctx, bind(role), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	broad := e.c.ServiceAccountToken(t, testNS, "broad")

	for _, tc := range []struct {
		name, token, user, want string
	}{
		{"admin token", e.c.AdminToken, cluster.ServiceAccountUser("kube-system", "socklb-agent"), "authenticates as"},
		{"role with secrets", broad, cluster.ServiceAccountUser(testNS, "broad"), "allowed: list secrets"},
	} {
		// As above, the bindings take a moment to be in force.
		var problems []string
		cluster.WaitFor(t, tc.name+" refused by the role check", waitLong, func(context.Context) (bool, error) {
			problems = agentRoleProblems(t, e.c, tc.token, tc.user)
			return strings.Contains(strings.Join(problems, "\n"), tc.want), nil
		})
		t.Logf("%s: %d problems, e.g. %q", tc.name, len(problems), problems[0])
	}
}
