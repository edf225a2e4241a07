//go:build nodee2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/socklb/socklb/pkg/netnsid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// bypassEntry is an entry of the agent's /status "bypassed".
type bypassEntry struct {
	Pod    string    `json:"pod"`
	UID    types.UID `json:"uid"`
	Cookie uint64    `json:"netnsCookie"`
	Why    string    `json:"why"`
}

type agentStatusReport struct {
	Ready    bool          `json:"ready"`
	Bypassed []bypassEntry `json:"bypassed"`
}

// agentStatus reads the agent's /status on its health address,
// 127.0.0.1:9811 in the node's network namespace (hostNetwork).
func (e *nodeEnv) agentStatus(ctx context.Context) (agentStatusReport, error) {
	var st agentStatusReport
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return e.n.NS.Dial(ctx, network, addr)
		},
		Proxy:             nil,
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:9811/status", nil)
	if err != nil {
		return st, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return st, fmt.Errorf("get /status: %s: %s", resp.Status, b)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// waitBypassed waits until /status lists exactly the pods want as
// bypassed, and returns the entries.
func (e *nodeEnv) waitBypassed(t *testing.T, want []string) []bypassEntry {
	t.Helper()
	var entries []bypassEntry
	took := waitFor(t, fmt.Sprintf("/status to list %v as bypassed", want), 30*time.Second, func(ctx context.Context) error {
		st, err := e.agentStatus(ctx)
		if err != nil {
			return err
		}
		var got []string
		for _, en := range st.Bypassed {
			got = append(got, en.Pod)
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("bypassed: %v", got)
		}
		entries = st.Bypassed
		return nil
	})
	t.Logf("bypass: /status lists %v as bypassed (after %v)", want, took.Round(time.Millisecond))
	return entries
}

// podNetnsCookie is the cookie of the network namespace of a pod's
// sandbox (pause) process, read by the test on the host.
func (e *nodeEnv) podNetnsCookie(t *testing.T, uid types.UID) uint64 {
	t.Helper()
	pid := e.pausePID(t, uid)
	c, err := netnsid.Cookie(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// pausePID is the host PID of a pod's pause process.
func (e *nodeEnv) pausePID(t *testing.T, uid types.UID) int {
	t.Helper()
	pids, err := e.n.PodPIDs(string(uid))
	if err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil && strings.TrimSpace(string(b)) == "pause" {
			return pid
		}
	}
	t.Fatalf("pod %s: no pause process among %v", uid, pids)
	return 0
}

// agentJSONLogs are the agent pod's log lines, decoded.
func (e *nodeEnv) agentJSONLogs(t testing.TB, pod string) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(e.mustKubectl(t, "-n", agentNamespace, "logs", pod)))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l map[string]any
		if json.Unmarshal(sc.Bytes(), &l) == nil {
			out = append(out, l)
		}
	}
	return out
}

// deleteNamespaces deletes namespaces and waits until they are gone (the
// namespace controller deletes their pods first), so that no bypassed or
// refused pod is left for the next scenario's agent.
func (e *nodeEnv) deleteNamespaces(t *testing.T, names ...string) {
	t.Helper()
	for _, ns := range names {
		if err := e.n.Client.CoreV1().Namespaces().Delete(t.Context(), ns, metav1.DeleteOptions{}); err != nil {
			t.Errorf("delete namespace %s: %v", ns, err)
		}
	}
	waitFor(t, fmt.Sprintf("namespaces %v gone", names), 2*time.Minute, func(ctx context.Context) error {
		for _, ns := range names {
			if _, err := e.n.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err == nil {
				return fmt.Errorf("namespace %s still exists", ns)
			}
		}
		return nil
	})
}
