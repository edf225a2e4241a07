// Package cluster starts a real Kubernetes control plane for socklb's end
// to end tests: etcd, kube-apiserver and kube-controller-manager (with only
// the EndpointSlice and garbage collector controllers), all inside a
// network namespace of their own and listening on 127.0.0.1 there.
//
// There is no kubelet and no scheduler. "Pods" are Pod objects whose spec
// names a Node and whose status the test writes ([Cluster.CreatePod],
// [Cluster.SetPodReady]); that is all the EndpointSlice controller reads.
// Nodes are objects too ([Cluster.CreateNode]); the controller skips pods
// whose node does not exist. Without a kubelet, a pod deleted with a grace
// period stays Terminating (its endpoint serving/terminating) until it is
// deleted again with GracePeriodSeconds 0.
//
// The API server authorizes with RBAC: AdminToken is in system:masters,
// PlainToken starts with no permissions. [Cluster.ApplyManifest] creates a
// manifest's ServiceAccounts and roles (deploy/rbac.yaml) and
// [Cluster.ServiceAccountToken] gets a ServiceAccount a token through the
// TokenRequest API, as a kubelet does for a pod.
//
// ClusterIPs come from ServiceCIDR (and ServiceCIDRv6 for dual-stack
// Services); default/kubernetes has ClusterIP KubernetesServiceIP and no
// endpoints (no endpoint reconciler).
//
// [StartWith] takes [Options]: other service ranges (e.g. room for 100 000
// ClusterIPs), no controller manager (a benchmark that writes its own
// EndpointSlices), a faster client, extra flags; with ServiceAccounts and
// more controllers it serves a real kubelet (package tests/node/harness).
//
// Everything [Start] creates (processes, the namespace, temporary files) is
// removed in t.Cleanup, also when the test fails; the components' logs are
// printed with t.Log only when it fails. The binaries are built once and
// cached by package kubebuild; a cold build takes minutes, so pre-build
// them (`go run ./tests/e2e/cmd/e2e-bin`) or give `go test` a timeout
// that leaves room for it.
package cluster

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/socklb/socklb/internal/sandbox"
	"github.com/socklb/socklb/tests/e2e/kubebuild"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Addresses inside the cluster's network namespace. The namespace is
// private, so the ports are fixed.
const (
	APIServerPort = 6443
	etcdPort      = 2379
	etcdPeerPort  = 2380
	kcmPort       = 10257

	// ServiceCIDR and ServiceCIDRv6 are --service-cluster-ip-range: the
	// cluster is dual-stack, IPv4 first, so a Service without ipFamilies
	// gets an IPv4 ClusterIP. Both come from the reserved benchmarking
	// ranges (RFC 2544 198.18.0.0/15, RFC 5180 2001:2::/48), never from a
	// routable one. Pods may take their IPs from 198.18.0.0/16 and
	// 2001:2::/64.
	ServiceCIDR   = "198.19.0.0/16"
	ServiceCIDRv6 = "2001:2:0:19::/112"
	// KubernetesServiceIP is the ClusterIP of default/kubernetes, the
	// first address of ServiceCIDR.
	KubernetesServiceIP = "198.19.0.1"
)

// Users in the API server's token file.
const (
	AdminUser = "e2e-admin" // in system:masters
	// PlainUser is only in system:authenticated: it may do nothing until a
	// test grants it something with RBAC, e.g. to check which permissions
	// the agent needs.
	PlainUser = "e2e-user"
	kcmUser   = "system:kube-controller-manager"
)

const (
	readyPoll    = 50 * time.Millisecond
	readyTimeout = 60 * time.Second
	// buildTimeout bounds building the binaries on a cold cache; it is
	// independent of the test's own deadline (see package doc).
	buildTimeout = 45 * time.Minute
	logTailBytes = 128 << 10
)

// Cluster is a running control plane. Its fields are read-only.
type Cluster struct {
	// NS is the network namespace every component runs in. Dial the API
	// server, and start the agent, inside it.
	NS *sandbox.Netns
	// Client is an admin client that dials inside NS.
	Client kubernetes.Interface
	// RESTConfig is Client's configuration (admin token, CA, NS.Dial), for
	// dynamic or other clients. Copy it (rest.CopyConfig) before changing it.
	RESTConfig *rest.Config
	// Kubeconfig is a kubeconfig file (mode 0600) for processes started in
	// NS, e.g. the agent: server https://127.0.0.1:6443, the admin token
	// and the CA. Use [Cluster.WriteKubeconfig] for another user.
	Kubeconfig string
	// Server is the API server's URL inside NS.
	Server string
	// AdminToken authenticates AdminUser; PlainToken authenticates PlainUser.
	AdminToken string
	PlainToken string
	// CAPEM is the CA that signed the API server's serving certificate.
	CAPEM []byte
	// Binaries are the cached kube-apiserver, kube-controller-manager and etcd.
	Binaries *kubebuild.Binaries
	// Dir holds certificates, the token file, etcd's data and the logs.
	Dir string
	// ServiceCIDRs are the ranges ClusterIPs come from: those of
	// --service-cluster-ip-range, then Options.ExtraServiceCIDRs.
	ServiceCIDRs []netip.Prefix

	apiArgs []string
	pki     *pki
	health  *http.Client

	mu         sync.Mutex
	etcd, kcm  *component
	api        *component
	components []*component // every component ever started, for logs
}

// component is one started process of the control plane.
type component struct {
	name string
	log  string
	cmd  *exec.Cmd
	stop func() error
}

var (
	binMu  sync.Mutex
	binMem *kubebuild.Binaries
)

// binaries builds (once per test process, and only when the cache is cold
// or stale) and returns the Kubernetes binaries.
func binaries(t testing.TB) *kubebuild.Binaries {
	t.Helper()
	binMu.Lock()
	defer binMu.Unlock()
	if binMem != nil {
		return binMem
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	start := time.Now()
	b, err := kubebuild.Ensure(ctx, logWriter{t})
	if err != nil {
		t.Fatalf("Kubernetes binaries: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Logf("built the Kubernetes binaries in %v; pre-build them with `go run ./tests/e2e/cmd/e2e-bin`", d.Round(time.Second))
	}
	binMem = b
	return b
}

// logWriter sends build progress to t.Log.
type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Start builds or reuses the binaries and starts etcd, kube-apiserver and
// kube-controller-manager in a new network namespace. It returns when the
// API server is ready, the default namespace exists and the controller
// manager is healthy. Everything stops and is removed when the test ends.
//
// It is StartWith(t, Options{}).
func Start(t testing.TB) *Cluster {
	t.Helper()
	return StartWith(t, Options{})
}

// Options change what [StartWith] starts. The zero value is [Start]'s
// cluster.
type Options struct {
	// ServiceCIDR is --service-cluster-ip-range: one CIDR, or a
	// comma-separated dual-stack pair, primary family first. Empty means
	// ServiceCIDR + "," + ServiceCIDRv6. With the ServiceCIDR API (GA and
	// locked on in v1.37) the API server no longer limits its size: an
	// IPv4 /15 works. The first address is default/kubernetes's ClusterIP.
	ServiceCIDR string
	// ExtraServiceCIDRs are created as ServiceCIDR objects
	// (networking.k8s.io/v1) once the API server is ready, and StartWith
	// waits until the API server allocates from each. Each must be of an
	// IP family of ServiceCIDR. The API server allocates a ClusterIP from
	// a range picked at random, the next one when it is full: with
	// ServiceCIDR 198.19.0.0/16, extras 198.18.128.0/17 and 198.18.64.0/18
	// give 114 682 ClusterIPs and leave 198.18.0.0/18 to the pods.
	ExtraServiceCIDRs []string
	// WithoutControllerManager starts no kube-controller-manager: no
	// EndpointSlice controller (the test writes EndpointSlices itself) and
	// no garbage collector.
	WithoutControllerManager bool
	// ClientQPS and ClientBurst are those of Client and RESTConfig;
	// 0 means 200 and 400.
	ClientQPS   float32
	ClientBurst int
	// APIServerArgs are appended to kube-apiserver's flags (a later flag
	// wins), e.g. "--max-requests-inflight=2000". EtcdArgs likewise, e.g.
	// "--quota-backend-bytes=8589934592".
	APIServerArgs []string
	EtcdArgs      []string
	// APIServerIPs are more addresses the API server's serving
	// certificate names, besides 127.0.0.1 and the kubernetes Service's
	// ClusterIP: those it is reached at when APIServerArgs make it listen
	// beyond loopback (e.g. a node IP that pods connect to).
	APIServerIPs []netip.Addr
	// ControllerManagerArgs are appended to kube-controller-manager's
	// flags. --controllers is a list that a later flag adds to, so
	// "--controllers=node-lifecycle-controller" runs that controller too.
	ControllerManagerArgs []string
	// ServiceAccounts makes the cluster fit for real pods, as a kubelet
	// runs them: the ServiceAccount admission plugin stays on (pods get a
	// service account and its token volume), and the controller manager
	// also runs the serviceaccount, serviceaccount-token and
	// root-ca-certificate-publisher controllers (the default service
	// accounts, legacy token Secrets signed with the cluster's key, and
	// the kube-root-ca.crt ConfigMap with its CA). Ignored without a
	// controller manager.
	ServiceAccounts bool
}

// StartWith is [Start] with options. Without a controller manager it
// returns when the API server is ready and the default namespace exists.
func StartWith(t testing.TB, opts Options) *Cluster {
	t.Helper()
	serviceRange := opts.ServiceCIDR
	if serviceRange == "" {
		serviceRange = ServiceCIDR + "," + ServiceCIDRv6
	}
	var serviceCIDRs []netip.Prefix
	for _, s := range append(strings.Split(serviceRange, ","), opts.ExtraServiceCIDRs...) {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil || p != p.Masked() {
			t.Fatalf("cluster options: service CIDR %q: not a CIDR (%v)", s, err)
		}
		serviceCIDRs = append(serviceCIDRs, p)
	}
	// An extra range must be of a family the flag configures; the API
	// server would accept the object but never allocate from it.
	flagRanges := len(serviceCIDRs) - len(opts.ExtraServiceCIDRs)
	for _, p := range serviceCIDRs[flagRanges:] {
		if !slices.ContainsFunc(serviceCIDRs[:flagRanges], func(f netip.Prefix) bool { return f.Addr().Is4() == p.Addr().Is4() }) {
			t.Fatalf("cluster options: extra service CIDR %s: its IP family is not in --service-cluster-ip-range=%s", p, serviceRange)
		}
	}
	qps, burst := opts.ClientQPS, opts.ClientBurst
	if qps == 0 {
		qps = 200
	}
	if burst == 0 {
		burst = 400
	}
	sandbox.RequirePrivileges(t)
	bins := binaries(t)

	c := &Cluster{
		Binaries:   bins,
		NS:         sandbox.NewNetns(t),
		Dir:        t.TempDir(),
		Server:     "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(APIServerPort)),
		AdminToken: token(),
		PlainToken: token(),

		ServiceCIDRs: serviceCIDRs,
	}
	// Cleanups run last-in first-out: stop the processes, then print the
	// logs of a failed test, then remove Dir (t.TempDir) and the netns.
	t.Cleanup(func() {
		if t.Failed() {
			c.dumpLogs(t)
		}
	})
	t.Cleanup(func() {
		if err := c.stopAll(); err != nil {
			t.Errorf("stop cluster: %v", err)
		}
	})

	var err error
	if c.pki, err = newPKI(c.Dir, opts.APIServerIPs); err != nil {
		t.Fatalf("cluster certificates: %v", err)
	}
	c.CAPEM = c.pki.caPEM
	kcmToken := token()
	tokens := fmt.Sprintf("%s,%s,%s,system:masters\n%s,%s,%s\n%s,%s,%s,system:masters\n",
		c.AdminToken, AdminUser, AdminUser,
		c.PlainToken, PlainUser, PlainUser,
		kcmToken, kcmUser, kcmUser)
	tokenFile := filepath.Join(c.Dir, "tokens.csv")
	if err := os.WriteFile(tokenFile, []byte(tokens), 0o600); err != nil {
		t.Fatal(err)
	}
	kcmKubeconfig := filepath.Join(c.Dir, "kcm.kubeconfig")
	if err := c.writeKubeconfig(kcmKubeconfig, kcmUser, kcmToken); err != nil {
		t.Fatal(err)
	}
	c.Kubeconfig = c.WriteKubeconfig(t, AdminUser, c.AdminToken)

	c.RESTConfig = &rest.Config{
		Host:            c.Server,
		BearerToken:     c.AdminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.CAPEM},
		Dial:            c.NS.Dial,
		Proxy:           noProxy, // never leave the namespace through a proxy
		QPS:             qps,
		Burst:           burst,
		UserAgent:       "socklb-e2e",
	}
	if c.Client, err = kubernetes.NewForConfig(c.RESTConfig); err != nil {
		t.Fatalf("client: %v", err)
	}
	c.health = c.healthClient()

	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPeerPort)
	c.etcd = c.start(t, "etcd", bins.Etcd, append([]string{
		"--name=e2e",
		"--data-dir=" + filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls=" + etcdURL,
		"--advertise-client-urls=" + etcdURL,
		"--listen-peer-urls=" + peerURL,
		"--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=e2e=" + peerURL,
		"--unsafe-no-fsync", // throwaway data; fsync is most of a write's cost
		"--log-level=warn",
	}, opts.EtcdArgs...)...)

	certDir := filepath.Join(c.Dir, "certs") // so that nothing writes to /var/run/kubernetes
	c.apiArgs = []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(APIServerPort),
		"--cert-dir=" + certDir,
		"--tls-cert-file=" + c.pki.apiCertFile,
		"--tls-private-key-file=" + c.pki.apiKeyFile,
		"--client-ca-file=" + c.pki.caFile,
		"--token-auth-file=" + tokenFile,
		"--authorization-mode=RBAC",
		// A node agent such as socklb's DaemonSet runs privileged; real
		// clusters allow that, and the dry-run of deploy/ needs it.
		"--allow-privileged=true",
		"--service-cluster-ip-range=" + serviceRange,
		"--endpoint-reconciler-type=none",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + c.pki.saPubFile,
		"--service-account-signing-key-file=" + c.pki.saKeyFile,
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--v=1",
	}
	if !opts.ServiceAccounts || opts.WithoutControllerManager {
		// No controller creates the default service accounts, and pods
		// never run: do not require or mount tokens.
		c.apiArgs = append(c.apiArgs, "--disable-admission-plugins=ServiceAccount")
	}
	c.apiArgs = append(c.apiArgs, opts.APIServerArgs...)
	c.api = c.start(t, "kube-apiserver", bins.APIServer, c.apiArgs...)
	if err := c.waitAPIServer(); err != nil {
		t.Fatal(err)
	}

	if opts.WithoutControllerManager {
		if err := c.waitDefaultNamespace(); err != nil {
			t.Fatal(err)
		}
		c.createServiceCIDRs(t, opts.ExtraServiceCIDRs)
		return c
	}
	kcmArgs := []string{
		"--kubeconfig=" + kcmKubeconfig,
		"--controllers=endpointslice-controller,garbage-collector-controller",
		"--leader-elect=false",
		"--use-service-account-credentials=false",
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(kcmPort),
		"--cert-dir=" + certDir,
		"--tls-cert-file=" + c.pki.kcmCertFile,
		"--tls-private-key-file=" + c.pki.kcmKeyFile,
		"--kube-api-qps=200",
		"--kube-api-burst=400",
		"--profiling=false",
		"--v=1",
	}
	if opts.ServiceAccounts {
		kcmArgs = append(kcmArgs,
			"--controllers=serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller",
			"--service-account-private-key-file="+c.pki.saKeyFile,
			"--root-ca-file="+c.pki.caFile,
		)
	}
	c.kcm = c.start(t, "kube-controller-manager", bins.ControllerManager, append(kcmArgs, opts.ControllerManagerArgs...)...)
	if err := c.waitDefaultNamespace(); err != nil {
		t.Fatal(err)
	}
	err = c.wait("kube-controller-manager /healthz", func(ctx context.Context) error {
		return c.getOK(ctx, fmt.Sprintf("https://127.0.0.1:%d/healthz", kcmPort), "")
	}, c.etcd, c.api, c.kcm)
	if err != nil {
		t.Fatal(err)
	}
	c.createServiceCIDRs(t, opts.ExtraServiceCIDRs)
	return c
}

func (c *Cluster) waitDefaultNamespace() error {
	return c.wait("the default namespace", func(ctx context.Context) error {
		_, err := c.Client.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
		return err
	}, c.etcd, c.api)
}

// createServiceCIDRs creates a ServiceCIDR object per CIDR, named
// e2e-extra-N, and waits until the API server allocates from it. No
// controller sets their Ready condition (the controller manager runs only
// the EndpointSlice and GC controllers), and the API server takes a
// ServiceCIDR without the condition as ready; so the wait is for a dry-run
// Service with the CIDR's first address to be accepted.
func (c *Cluster) createServiceCIDRs(t testing.TB, cidrs []string) {
	t.Helper()
	for i, cidr := range cidrs {
		name := fmt.Sprintf("e2e-extra-%d", i)
		prefix := netip.MustParsePrefix(strings.TrimSpace(cidr)) // checked by StartWith
		obj := &networkingv1.ServiceCIDR{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       networkingv1.ServiceCIDRSpec{CIDRs: []string{prefix.String()}},
		}
		ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		_, err := c.Client.NetworkingV1().ServiceCIDRs().Create(ctx, obj, metav1.CreateOptions{})
		cancel()
		if err != nil {
			t.Fatalf("create ServiceCIDR %s (%s): %v", name, prefix, err)
		}
		family := corev1.IPv4Protocol
		if prefix.Addr().Is6() {
			family = corev1.IPv6Protocol
		}
		probe := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name + "-probe"},
			Spec: corev1.ServiceSpec{
				ClusterIP:  prefix.Addr().Next().String(),
				IPFamilies: []corev1.IPFamily{family},
				Ports:      []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}},
			},
		}
		err = c.wait("ServiceCIDR "+name+" ("+prefix.String()+") in use", func(ctx context.Context) error {
			_, err := c.Client.CoreV1().Services("default").Create(ctx, probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			return err
		}, c.etcd, c.api)
		if err != nil {
			t.Fatal(err)
		}
	}
}
