package cluster

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
)

// strictDecoder decodes typed objects of client-go's scheme and rejects
// unknown or duplicate fields, so a typo in a manifest fails the test
// instead of silently granting less.
var strictDecoder = serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()

// DecodeManifest decodes a multi-document YAML file, as `kubectl apply -f`
// takes it, into typed objects. Documents with only comments are skipped.
func DecodeManifest(path string) ([]runtime.Object, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r := yaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(raw)))
	var objs []runtime.Object
	for i := 1; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		js, err := yaml.ToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", path, i, err)
		}
		if string(bytes.TrimSpace(js)) == "null" {
			continue
		}
		obj, _, err := strictDecoder.Decode(js, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", path, i, err)
		}
		objs = append(objs, obj)
	}
}

// ApplyManifest creates, for real, the objects of a manifest file:
// ServiceAccounts, ConfigMaps, (Cluster)Roles and (Cluster)RoleBindings;
// any other kind fails the test. A namespace the API server creates itself
// (kube-system) is waited for. It returns the created objects.
func (c *Cluster) ApplyManifest(t testing.TB, path string) []runtime.Object {
	t.Helper()
	objs, err := DecodeManifest(path)
	if err != nil {
		t.Fatalf("manifest: %v", err)
	}
	if len(objs) == 0 {
		t.Fatalf("manifest %s has no objects", path)
	}
	var created []runtime.Object
	for _, obj := range objs {
		var out runtime.Object
		what := fmt.Sprintf("%s: %T", filepath.Base(path), obj)
		// Wait out the API server's creation of its system namespaces.
		WaitFor(t, "create "+what, 30*time.Second, func(ctx context.Context) (bool, error) {
			o, err := c.create(ctx, obj)
			if apierrors.IsNotFound(err) {
				return false, err
			}
			if err != nil {
				t.Fatalf("create %s: %v", what, err)
			}
			out = o
			return true, nil
		})
		created = append(created, out)
	}
	return created
}

func (c *Cluster) create(ctx context.Context, obj runtime.Object) (runtime.Object, error) {
	opts := metav1.CreateOptions{FieldValidation: metav1.FieldValidationStrict}
	ns := func(m metav1.Object) string {
		if m.GetNamespace() == "" {
			return metav1.NamespaceDefault
		}
		return m.GetNamespace()
	}
	switch o := obj.(type) {
	case *corev1.ServiceAccount:
		return c.Client.CoreV1().ServiceAccounts(ns(o)).Create(ctx, o, opts)
	case *corev1.ConfigMap:
		return c.Client.CoreV1().ConfigMaps(ns(o)).Create(ctx, o, opts)
	case *rbacv1.ClusterRole:
		return c.Client.RbacV1().ClusterRoles().Create(ctx, o, opts)
	case *rbacv1.ClusterRoleBinding:
		return c.Client.RbacV1().ClusterRoleBindings().Create(ctx, o, opts)
	case *rbacv1.Role:
		return c.Client.RbacV1().Roles(ns(o)).Create(ctx, o, opts)
	case *rbacv1.RoleBinding:
		return c.Client.RbacV1().RoleBindings(ns(o)).Create(ctx, o, opts)
	}
	return nil, fmt.Errorf("ApplyManifest does not create %T", obj)
}

// ServiceAccountUser is the user name the API server gives a
// ServiceAccount's tokens.
func ServiceAccountUser(ns, name string) string {
	return "system:serviceaccount:" + ns + ":" + name
}

// ServiceAccountToken gets a bound token of the ServiceAccount ns/name
// from the TokenRequest API, as a kubelet does for a pod, valid for two
// hours (longer than any test). The API server signs it with the
// --service-account-signing-key-file key that StartWith gives it. Never
// log it.
func (c *Cluster) ServiceAccountToken(t testing.TB, ns, name string) string {
	t.Helper()
	ctx, cancel := ctx(t)
	defer cancel()
	seconds := int64(2 * time.Hour / time.Second)
	tr, err := c.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &seconds},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for service account %s/%s: %v", ns, name, err)
	}
	if tr.Status.Token == "" {
		t.Fatalf("token for service account %s/%s: empty", ns, name)
	}
	return tr.Status.Token
}

// ClientFor is an API client that authenticates with token (and nothing
// else of the admin's), dialing inside NS.
func (c *Cluster) ClientFor(t testing.TB, token string) kubernetes.Interface {
	t.Helper()
	cfg := rest.CopyConfig(c.RESTConfig)
	cfg.BearerToken = token
	cfg.BearerTokenFile = ""
	cfg.UserAgent = "socklb-e2e-token"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	return client
}

// WhoAmI asks the API server who token authenticates as.
func (c *Cluster) WhoAmI(t testing.TB, token string) authenticationv1.UserInfo {
	t.Helper()
	ctx, cancel := ctx(t)
	defer cancel()
	r, err := c.ClientFor(t, token).AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("self subject review: %v", err)
	}
	return r.Status.UserInfo
}
