package scenarios

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"

	"github.com/socklb/socklb/internal/testagent"
)

// TestPrivilegedAgentLogsNoSecrets: with --log-level=debug, neither the
// agent's ServiceAccount token nor a token the API server rejects (so
// that client-go logs its failures) appears in what the agent prints, nor
// does an Authorization header or the kubeconfig's contents.
func TestPrivilegedAgentLogsNoSecrets(t *testing.T) {
	e := newEnv(t)
	web := labelsOf("app", "web")
	a := e.node(t, "node-a", "")
	good := e.startAgent(t, a, "--log-level=debug")
	e.pod(t, "web-1", "198.18.0.11", "node-a", web, true)
	svc := e.service(t, "web", web, nil)
	e.waitOutcomes(t, a, vip(svc, 80), "web-1")
	e.c.SetPodReady(t, testNS, "web-1", false)
	e.waitOutcomes(t, a, vip(svc, 80), "refused")

	var b [32]byte
	rand.Read(b[:]) // never fails (crypto/rand, Go ≥ 1.24)
	badToken := hex.EncodeToString(b[:])
	badKubeconfig := e.c.WriteKubeconfig(t, "socklb-rejected", badToken)
	n := e.node(t, "node-b", "")
	bad := testagent.Start(t, n.cmd("run", "--source=kubernetes", "--kubeconfig="+badKubeconfig,
		"--node-name=node-b", "--health-addr=", "--metrics-addr=", "--log-level=debug"), e.c.NS)
	bad.WaitLog(t, "Unauthorized", waitLong)

	for _, tc := range []struct {
		name, logs, token, kubeconfig string
	}{
		{"agent with the ServiceAccount token", good.Logs(), e.agentToken, e.agentKubeconfig},
		{"agent with a rejected token", bad.Logs(), badToken, badKubeconfig},
	} {
		kc, err := os.ReadFile(tc.kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		secrets := map[string]string{"the token": tc.token}
		// A JWT's header is the same for every token; its signature is
		// not, and is enough to replay it with the rest.
		if parts := strings.Split(tc.token, "."); len(parts) == 3 {
			secrets["the token's signature"] = parts[2]
		}
		for line := range strings.Lines(string(kc)) {
			if k, v, ok := strings.Cut(strings.TrimSpace(line), ": "); ok && k == "certificate-authority-data" {
				secrets["the kubeconfig's contents (its CA data)"] = v
			}
		}
		for what, s := range secrets {
			if s == "" || strings.Contains(tc.logs, s) {
				t.Errorf("%s: the log shows %s (or it is empty)", tc.name, what)
			}
		}
		if l := strings.ToLower(tc.logs); strings.Contains(l, "bearer") || strings.Contains(l, "authorization:") {
			t.Errorf("%s: the log shows an Authorization header:\n%s", tc.name, tc.logs)
		}
		t.Logf("%s: %d lines of log, no secret in them; last:\n%s", tc.name, strings.Count(tc.logs, "\n"), lastLine(tc.logs))
	}
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	return s[strings.LastIndexByte(s, '\n')+1:]
}
