package cluster_test

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	"github.com/socklb/socklb/tests/e2e/cluster"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestPrivilegedStartWith starts a cluster without a controller manager,
// with an IPv6 service range larger than the old limit (/108) and extra
// ServiceCIDR objects, and allocates ClusterIPs from all of them.
func TestPrivilegedStartWith(t *testing.T) {
	c := cluster.StartWith(t, cluster.Options{
		ServiceCIDR:              "198.19.0.0/16,2001:2:0:19::/64",
		ExtraServiceCIDRs:        []string{"198.18.128.0/17", "2001:2:0:18::/108"},
		WithoutControllerManager: true,
		ClientQPS:                1000,
		ClientBurst:              2000,
		APIServerArgs:            []string{"--max-requests-inflight=800"},
	})
	if _, ok := c.PIDs()["kube-controller-manager"]; ok {
		t.Errorf("PIDs() = %v: a controller manager runs", c.PIDs())
	}
	var want []netip.Prefix
	for _, s := range []string{"198.19.0.0/16", "2001:2:0:19::/64", "198.18.128.0/17", "2001:2:0:18::/108"} {
		want = append(want, netip.MustParsePrefix(s))
	}
	if !slices.Equal(c.ServiceCIDRs, want) {
		t.Errorf("ServiceCIDRs = %v, want %v", c.ServiceCIDRs, want)
	}
	if got := c.RESTConfig.QPS; got != 1000 {
		t.Errorf("RESTConfig.QPS = %v, want 1000", got)
	}

	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	kube, err := c.Client.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if kube.Spec.ClusterIP != "198.19.0.1" {
		t.Errorf("default/kubernetes ClusterIP = %s, want the range's first address 198.19.0.1", kube.Spec.ClusterIP)
	}
	for _, tc := range []struct {
		name, ip string
		family   corev1.IPFamily
	}{
		{"in-flag-v6", "2001:2:0:19:ffff::1", corev1.IPv6Protocol}, // beyond a /108
		{"in-extra-v4", "198.18.255.254", corev1.IPv4Protocol},
		{"in-extra-v6", "2001:2:0:18::f:ffff", corev1.IPv6Protocol},
		{"allocated", "", corev1.IPv4Protocol},
	} {
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: tc.name},
			Spec: corev1.ServiceSpec{
				ClusterIP:  tc.ip,
				IPFamilies: []corev1.IPFamily{tc.family},
				Ports:      []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}},
			},
		}
		got, err := c.Client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{})
		if err != nil {
			t.Errorf("create service %s with ClusterIP %q: %v", tc.name, tc.ip, err)
			continue
		}
		ip := netip.MustParseAddr(got.Spec.ClusterIP)
		if tc.ip != "" && ip != netip.MustParseAddr(tc.ip) || !slices.ContainsFunc(want, func(p netip.Prefix) bool { return p.Contains(ip) }) {
			t.Errorf("service %s got ClusterIP %s, want %q inside %v", tc.name, ip, tc.ip, want)
		}
	}
}
