package main

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/socklb/socklb/internal/sandbox"
	"github.com/socklb/socklb/internal/testagent"
	"github.com/socklb/socklb/internal/testlog"
)

// clearAgentEnv unsets, for the test, every variable the agent reads, so
// the developer's own environment does not change the results.
func clearAgentEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "SOCKLB_") || name == "NODE_NAME" {
			t.Setenv(name, "") // restores the value after the test
			os.Unsetenv(name)
		}
	}
}

// testEnvName is the SOCKLB_ variable of a flag, spelled out here rather
// than taken from the code under test.
func testEnvName(flag string) string {
	return "SOCKLB_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// loadWith runs the root command with a subcommand of the test's own that
// only records the Config, so the full path (flags, env, file, checks)
// runs and nothing is touched. called says whether the command ran at all.
func loadWith(t *testing.T, args ...string) (c Config, called bool, err error) {
	t.Helper()
	var out bytes.Buffer
	root, v := newRoot(&out, &out)
	root.AddCommand(&cobra.Command{
		Use:  "capture",
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			called = true
			var err error
			c, err = loadConfig(v)
			return err
		},
	})
	root.SetArgs(append([]string{"capture"}, args...))
	err = root.Execute()
	return c, called, err
}

func writeConfig(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func wantErrContaining(t *testing.T, what string, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error, want one containing %q", what, parts)
		return
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %q does not contain %q", what, err, p)
		}
	}
}

func TestFinding5UnknownConfigKeyFails(t *testing.T) {
	clearAgentEnv(t)
	cfg := writeConfig(t, "log-levl: debug\nbpffs_path: /tmp/elsewhere\nLog-Level: info\n")
	_, called, err := loadWith(t, "--config", cfg)
	wantErrContaining(t, "capture", err,
		"config "+cfg+": ",
		`key "log-levl" (line 1): unknown (did you mean "log-level"?)`,
		`key "bpffs_path" (line 2): unknown (did you mean "bpffs-path"?)`,
		`key "Log-Level" (line 3): unknown (did you mean "log-level"?)`)
	if called {
		t.Error("the command ran despite the bad config")
	}
	// run fails the same way, before anything else.
	_, err = execute(t, "run", "--config", cfg, "--bpffs-path="+t.TempDir(), "--cgroup-path="+t.TempDir())
	wantErrContaining(t, "run", err, `key "log-levl"`)
	// A key far from every flag gets no suggestion.
	_, _, err = loadWith(t, "--config", writeConfig(t, "frobnicate-widgets: 1\n"))
	wantErrContaining(t, "far key", err, `key "frobnicate-widgets" (line 1): unknown`)
	if err != nil && strings.Contains(err.Error(), "did you mean") {
		t.Errorf("far key: %v, want no suggestion", err)
	}
}

// badValues are values of the wrong type or out of range, each with what
// the error must say.
var badValues = []struct{ key, value, want string }{
	{"min-sync-interval", "fast", "invalid duration"},
	{"min-sync-interval", "100", "invalid duration"}, // no unit
	{"destroy-tcp", "yes please", "invalid boolean"},
	{"destroy-tcp", "yes", "invalid boolean"}, // YAML 1.1's yes is not ParseBool's
	{"sync-burst", "many", "invalid integer"},
	{"sync-burst", "2.5", "invalid integer"},
	{"service-map-entries", "-1", "invalid unsigned 32-bit integer"},
	{"backend-map-entries", "4294967296", "out of range"},
	{"reconcile-interval", "soon", "invalid duration"},
	{"skip-capability-check", "sure", "invalid boolean"},
}

// outOfRange are well-typed values that break a rule.
var outOfRange = []struct{ key, value, want string }{
	{"sync-burst", "0", "want at least 1"},
	{"min-sync-interval", "-1s", "negative"},
	{"service-map-entries", "1023", "want at least 1024"},
	{"backend-map-entries", "100", "want at least 1024"},
	{"service-map-entries", "16777217", "at most 16777216"},
	{"reconcile-interval", "0s", "want more than 0 and at most 1h0m0s"},
	{"reconcile-interval", "2h", "want more than 0 and at most 1h0m0s"},
	{"log-format", "xml", "want text or json"},
	{"log-level", "loud", "unknown name"},
	{"source", "nfs", "want kubernetes or file"},
	{"bpffs-path", "", "empty"},
	{"health-addr", "localhost", "want host:port"},
	{"metrics-addr", "127.0.0.1:http", "want a number"},
	{"pprof-addr", "localhost", "missing port"},
	{"service-selector", "env in (a", "selector"},
}

func TestFinding5WrongTypeFails(t *testing.T) {
	checkEverySource(t, badValues, true)
}

func TestFinding5BadValueFails(t *testing.T) {
	checkEverySource(t, outOfRange, false)
}

// checkEverySource gives each bad value by config file, by SOCKLB_
// variable and by flag, and checks that the error names the key, the
// source and the value.
func checkEverySource(t *testing.T, cases []struct{ key, value, want string }, typeError bool) {
	clearAgentEnv(t)
	for _, tc := range cases {
		t.Run(tc.key+"="+tc.value, func(t *testing.T) {
			cfg := writeConfig(t, tc.key+": "+yamlScalar(tc.value)+"\n")
			_, called, err := loadWith(t, "--config", cfg)
			wantErrContaining(t, "file", err, "config "+cfg+": ", `key "`+tc.key+`" (line 1): value "`+tc.value+`": `, tc.want)
			if called {
				t.Error("file: the command ran")
			}

			env := testEnvName(tc.key)
			t.Setenv(env, tc.value)
			_, called, err = loadWith(t)
			wantErrContaining(t, "env", err, env+"="+`"`+tc.value+`": `, tc.want)
			if called {
				t.Error("env: the command ran")
			}
			os.Unsetenv(env)

			_, called, err = loadWith(t, "--"+tc.key+"="+tc.value)
			if typeError {
				// pflag's own message, which names flag and value.
				wantErrContaining(t, "flag", err, `invalid argument "`+tc.value+`" for "--`+tc.key+`" flag`)
			} else {
				// The flag's value as pflag prints it: 2h0m0s for 2h.
				wantErrContaining(t, "flag", err, "flag --"+tc.key+` "`, tc.want)
			}
			if called {
				t.Error("flag: the command ran")
			}
		})
	}
}

// yamlScalar writes s as a YAML scalar that reads back as the same text.
func yamlScalar(s string) string {
	if s == "" || strings.ContainsAny(s, "[]{}#,&*!|>'\"%@`") || strings.HasPrefix(s, "-") && !strings.ContainsAny(s, "0123456789") {
		return `"` + s + `"`
	}
	return s
}

func TestFinding5UnknownEnvFails(t *testing.T) {
	clearAgentEnv(t)
	t.Setenv("SOCKLB_LOG_LEVL", "debug")
	t.Setenv("SOCKLB_FORCE", "1") // cleanup's --force is a flag only
	t.Setenv("SOCKLB_bpffs_path", "/tmp/x")
	_, called, err := loadWith(t)
	wantErrContaining(t, "unknown env", err,
		`SOCKLB_LOG_LEVL: unknown variable (did you mean "SOCKLB_LOG_LEVEL"?)`,
		`SOCKLB_FORCE: unknown variable`,
		// viper reads only the upper-case spelling.
		`SOCKLB_bpffs_path: unknown variable (did you mean "SOCKLB_BPFFS_PATH"?)`)
	if called {
		t.Error("the command ran despite the unknown variables")
	}
}

func TestFinding5KnownEnvAccepted(t *testing.T) {
	clearAgentEnv(t)
	t.Setenv("NODE_NAME", "node-from-downward-api")
	t.Setenv("SOCKLB_METRICS_ADDR", "10.0.0.7:9810") // the DaemonSet's
	t.Setenv("SOCKLB_AGENT_BIN", "/tmp/agent")       // test tooling's
	t.Setenv("SOCKLB_ALLOW_MISSING_FEATURES", "1")
	c, _, err := loadWith(t)
	if err != nil {
		t.Fatal(err)
	}
	if c.NodeName != "node-from-downward-api" || c.MetricsAddr != "10.0.0.7:9810" {
		t.Errorf("node %q, metrics %q", c.NodeName, c.MetricsAddr)
	}
}

// TestFinding5EmptyAndNull: YAML null is an error, since neither "use the
// default" nor "empty" is a safe guess (health-addr: empty disables,
// default enables); "" and an empty variable mean the empty string.
func TestFinding5EmptyAndNull(t *testing.T) {
	clearAgentEnv(t)
	for _, null := range []string{"health-addr:\n", "health-addr: ~\n", "health-addr: null\n"} {
		_, _, err := loadWith(t, "--config", writeConfig(t, null))
		wantErrContaining(t, null, err, `key "health-addr" (line 1): no value`)
	}
	c, _, err := loadWith(t, "--config", writeConfig(t, "health-addr: \"\"\n"))
	if err != nil || c.HealthAddr != "" {
		t.Errorf(`health-addr: "": %q, %v; want it empty`, c.HealthAddr, err)
	}
	t.Setenv("SOCKLB_METRICS_ADDR", "")
	c, _, err = loadWith(t)
	if err != nil || c.MetricsAddr != "" {
		t.Errorf(`SOCKLB_METRICS_ADDR="": %q, %v; want it empty`, c.MetricsAddr, err)
	}
	t.Setenv("SOCKLB_SYNC_BURST", "")
	_, _, err = loadWith(t)
	wantErrContaining(t, "empty number", err, `SOCKLB_SYNC_BURST="": invalid integer`)
}

func TestFinding5ConfigFileShape(t *testing.T) {
	clearAgentEnv(t)
	for _, tc := range []struct{ content, want string }{
		{"sync-burst: [1, 2]\n", `key "sync-burst" (line 1): want a single value`},
		{"log-format:\n  text: true\n", `key "log-format" (line 2): want a single value`},
		{"sync-burst: 2\nsync-burst: 3\n", `key "sync-burst" (line 2): also set on line 1`},
		{"config: /etc/other.yaml\n", `key "config" (line 1): a config file cannot name another`},
		{"- bpffs-path\n", "line 1: want a mapping"},
		{"sync-burst: 2\n---\nsync-burst: 3\n", "a second YAML document"},
		{"sync-burst: [\n", "parse YAML"},
	} {
		_, called, err := loadWith(t, "--config", writeConfig(t, tc.content))
		wantErrContaining(t, tc.content, err, tc.want)
		if called {
			t.Errorf("%q: the command ran", tc.content)
		}
	}
	// An empty file, or one of comments, is no settings at all.
	for _, empty := range []string{"", "# nothing yet\n", "---\n"} {
		if _, _, err := loadWith(t, "--config", writeConfig(t, empty)); err != nil {
			t.Errorf("%q: %v", empty, err)
		}
	}
	// Anchors and aliases are plain YAML and work.
	c, _, err := loadWith(t, "--config", writeConfig(t, "node-name: &n node-a\nkubeconfig: *n\n"))
	if err != nil || c.Kubeconfig != "node-a" {
		t.Errorf("alias: %q, %v", c.Kubeconfig, err)
	}
}

// TestFinding5AllErrorsAtOnce: one run names every bad source, so a
// rollout is fixed in one go.
func TestFinding5AllErrorsAtOnce(t *testing.T) {
	clearAgentEnv(t)
	t.Setenv("SOCKLB_SYNC_BURST", "many")
	_, _, err := loadWith(t, "--config", writeConfig(t, "log-levl: debug\n"), "--reconcile-interval=2h")
	wantErrContaining(t, "all", err, `SOCKLB_SYNC_BURST="many"`, `key "log-levl"`, `flag --reconcile-interval "2h0m0s"`)
}

// flagRow is how one flag is set in TestFinding9EveryFlagReachesConfig and
// where it must land.
type flagRow struct {
	value string
	also  []string // other flags the value needs to be accepted
	get   func(Config) any
	want  any
}

func TestFinding9EveryFlagReachesConfig(t *testing.T) {
	clearAgentEnv(t)
	emptyConfig := writeConfig(t, "# no settings\n")
	rows := map[string]flagRow{
		"config":        {value: emptyConfig, get: func(c Config) any { return c.ConfigFile }, want: emptyConfig},
		"bpffs-path":    {value: "/sys/fs/bpf/other", get: func(c Config) any { return c.BPFFSPath }, want: "/sys/fs/bpf/other"},
		"cgroup-path":   {value: "/sys/fs/cgroup/test.slice", get: func(c Config) any { return c.CgroupPath }, want: "/sys/fs/cgroup/test.slice"},
		"source":        {value: "kubernetes", also: []string{"--services-file=/srv/s.yaml"}, get: func(c Config) any { return c.Source }, want: "kubernetes"},
		"services-file": {value: "/srv/services.yaml", get: func(c Config) any { return c.ServicesFile }, want: "/srv/services.yaml"},
		"kubeconfig":    {value: "/root/.kube/config", get: func(c Config) any { return c.Kubeconfig }, want: "/root/.kube/config"},
		"node-name":     {value: "node-a", get: func(c Config) any { return c.NodeName }, want: "node-a"},
		"node-zone":     {value: "zone-a", get: func(c Config) any { return c.NodeZone }, want: "zone-a"},
		"bypass-namespace-selector": {value: "istio-injection=enabled", get: func(c Config) any { return c.BypassNamespaces },
			want: "istio-injection=enabled"},
		"bypass-pod-selector": {value: "socklb.io/bypass in (true)", get: func(c Config) any { return c.BypassPods },
			want: "socklb.io/bypass in (true)"},
		"service-selector": {value: "env in (prod, qa)", get: func(c Config) any { return c.ServiceSelector }, want: "env in (prod, qa)"},
		"health-addr":      {value: "127.0.0.1:19811", get: func(c Config) any { return c.HealthAddr }, want: "127.0.0.1:19811"},
		"metrics-addr":     {value: "[::1]:19810", get: func(c Config) any { return c.MetricsAddr }, want: "[::1]:19810"},
		"pprof-addr":       {value: "127.0.0.1:6060", get: func(c Config) any { return c.PprofAddr }, want: "127.0.0.1:6060"},
		"destroy-tcp":      {value: "true", get: func(c Config) any { return c.DestroyTCP }, want: true},
		"log-format":       {value: "json", get: func(c Config) any { return c.LogFormat }, want: "json"},
		"log-level":        {value: "debug", get: func(c Config) any { return c.LogLevel }, want: slog.LevelDebug},
		"min-sync-interval": {value: "250ms", get: func(c Config) any { return c.MinSync },
			want: 250 * time.Millisecond},
		"sync-burst":          {value: "5", get: func(c Config) any { return c.SyncBurst }, want: 5},
		"service-map-entries": {value: "2048", get: func(c Config) any { return c.ServiceMapEntries }, want: uint32(2048)},
		"backend-map-entries": {value: "4096", get: func(c Config) any { return c.BackendMapEntries }, want: uint32(4096)},
		"reconcile-interval": {value: "30s", get: func(c Config) any { return c.ReconcileInterval },
			want: 30 * time.Second},
		"outlier-detection":            {value: "false", get: func(c Config) any { return c.Outlier }, want: false},
		"outlier-consecutive-failures": {value: "5", get: func(c Config) any { return c.OutlierFailures }, want: uint32(5)},
		"outlier-base-ejection": {value: "10s", get: func(c Config) any { return c.OutlierBaseEjection },
			want: 10 * time.Second},
		"outlier-max-ejection": {value: "10m", get: func(c Config) any { return c.OutlierMaxEjection },
			want: 10 * time.Minute},
		"outlier-max-ejection-percent": {value: "30", get: func(c Config) any { return c.OutlierMaxEjectionPercent }, want: 30},
		// "1" is how tests/caps_test.go sets it.
		"skip-capability-check": {value: "1", get: func(c Config) any { return c.SkipCapabilityCheck }, want: true},
	}
	root, _ := newRoot(&bytes.Buffer{}, &bytes.Buffer{})
	n := 0
	root.PersistentFlags().VisitAll(func(f *pflag.Flag) {
		n++
		row, ok := rows[f.Name]
		if !ok {
			t.Errorf("flag --%s has no row here: add one, and a Config field it lands in", f.Name)
			return
		}
		t.Run(f.Name, func(t *testing.T) {
			base, _, err := loadWith(t, row.also...)
			if err != nil {
				t.Fatalf("without --%s: %v", f.Name, err)
			}
			if got := row.get(base); got == row.want {
				t.Fatalf("the row's value %v is what --%s is without it: pick another", got, f.Name)
			}
			check := func(how string, args ...string) {
				t.Helper()
				c, _, err := loadWith(t, append(args, row.also...)...)
				if err != nil {
					t.Errorf("by %s: %v", how, err)
					return
				}
				if got := row.get(c); got != row.want {
					t.Errorf("by %s: Config has %v (%T), want %v (%T)", how, got, got, row.want, row.want)
				}
			}
			check("flag", "--"+f.Name+"="+row.value)

			t.Setenv(testEnvName(f.Name), row.value)
			check("env " + testEnvName(f.Name))
			os.Unsetenv(testEnvName(f.Name))

			if f.Name == "config" {
				return // the file cannot name itself; TestFinding5ConfigFileShape
			}
			cfg := writeConfig(t, f.Name+": "+yamlScalar(row.value)+"\n")
			check("config file", "--config", cfg)
		})
	})
	if n != len(rows) {
		t.Errorf("%d flags, %d rows: remove the rows of flags that are gone", n, len(rows))
	}
}

func TestFinding9DestroyTCPReachesConfig(t *testing.T) {
	clearAgentEnv(t)
	for _, tc := range []struct {
		name string
		env  string
		args []string
	}{
		{"flag", "", []string{"--destroy-tcp"}},
		{"env", "true", nil},
		{"file", "", []string{"--config", writeConfig(t, "destroy-tcp: true\n")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv("SOCKLB_DESTROY_TCP", tc.env)
			}
			c, _, err := loadWith(t, tc.args...)
			if err != nil || !c.DestroyTCP {
				t.Errorf("DestroyTCP %v, %v; want true", c.DestroyTCP, err)
			}
		})
	}
}

// TestDeployConfigIsValid loads the config.yaml that deploy/config.yaml's
// ConfigMap gives the agent: every key is a flag and it loads cleanly.
func TestDeployConfigIsValid(t *testing.T) {
	clearAgentEnv(t)
	raw, err := os.ReadFile("../../deploy/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cm struct {
		Kind string            `yaml:"kind"`
		Data map[string]string `yaml:"data"`
	}
	if err := yaml.Unmarshal(raw, &cm); err != nil {
		t.Fatal(err)
	}
	embedded, ok := cm.Data["config.yaml"]
	if cm.Kind != "ConfigMap" || !ok {
		t.Fatalf("deploy/config.yaml: kind %q, data keys %v; want a ConfigMap with config.yaml", cm.Kind, cm.Data)
	}
	var keys map[string]any
	if err := yaml.Unmarshal([]byte(embedded), &keys); err != nil {
		t.Fatal(err)
	}
	root, _ := newRoot(&bytes.Buffer{}, &bytes.Buffer{})
	for k := range keys {
		if root.PersistentFlags().Lookup(k) == nil {
			t.Errorf("deploy/config.yaml: key %q is no flag", k)
		}
	}
	// The DaemonSet sets these two.
	t.Setenv("NODE_NAME", "node-a")
	t.Setenv("SOCKLB_METRICS_ADDR", "10.0.0.7:9810")
	c, _, err := loadWith(t, "--config", writeConfig(t, embedded))
	if err != nil {
		t.Fatalf("deploy/config.yaml: %v", err)
	}
	if c.Source != sourceKubernetes || c.LogFormat != "json" {
		t.Errorf("deploy/config.yaml: source %q, log format %q", c.Source, c.LogFormat)
	}
}

func TestSkipCapabilityCheckIsHidden(t *testing.T) {
	out, err := execute(t, "--help")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "skip-capability-check") {
		t.Errorf("--help lists the test-only --skip-capability-check:\n%s", out)
	}
	if !strings.Contains(out, "reconcile-interval") {
		t.Errorf("--help does not list --reconcile-interval:\n%s", out)
	}
}

func waitForLog(t *testing.T, logs *testlog.Buffer, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q; logs:\n%s", want, logs)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestFinding5SIGHUPIsLoggedNotFatal sends real signals to the test
// process. Before the fix, SIGHUP killed it (exit 129, no log line).
func TestFinding5SIGHUPIsLoggedNotFatal(t *testing.T) {
	for _, stopSig := range []struct {
		sig  syscall.Signal
		name string
	}{{syscall.SIGTERM, "SIGTERM"}, {syscall.SIGINT, "SIGINT"}} {
		t.Run(stopSig.name, func(t *testing.T) {
			logs := &testlog.Buffer{}
			log := newLogger(Config{LogFormat: "text", LogLevel: slog.LevelInfo}, logs)
			ctx, stop := notifySignals(context.Background(), log)
			defer stop()

			if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
				t.Fatal(err)
			}
			waitForLog(t, logs, "received SIGHUP: configuration is read only at start; restart the agent to change it")
			if ctx.Err() != nil {
				t.Fatal("SIGHUP stopped the agent")
			}

			if err := syscall.Kill(os.Getpid(), stopSig.sig); err != nil {
				t.Fatal(err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(5 * time.Second):
				t.Fatalf("%s did not stop the agent", stopSig.name)
			}
			waitForLog(t, logs, "received "+stopSig.name+": stopping")
			stop()
			if strings.Count(logs.String(), "\n") != 2 {
				t.Errorf("want two log lines:\n%s", logs)
			}
		})
	}
}

// TestDeployMetricsAddrBothFamilies expands each DaemonSet's
// SOCKLB_METRICS_ADDR as the kubelet does, with an IPv4 and an IPv6 node
// address for $(HOST_IP): the agent accepts both, and the address
// resolves to exactly that IP and port 9810, as net.Listen resolves it
// (the unbracketed "$(HOST_IP):9810" broke on IPv6 nodes).
func TestDeployMetricsAddrBothFamilies(t *testing.T) {
	for _, file := range []string{"../../deploy/daemonset.yaml", "../../deploy/capabilities/daemonset.yaml"} {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var ds struct {
			Spec struct {
				Template struct {
					Spec struct {
						Containers []struct {
							Env []struct{ Name, Value string } `yaml:"env"`
						} `yaml:"containers"`
					} `yaml:"spec"`
				} `yaml:"template"`
			} `yaml:"spec"`
		}
		if err := yaml.Unmarshal(raw, &ds); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		value := ""
		for _, c := range ds.Spec.Template.Spec.Containers {
			for _, e := range c.Env {
				if e.Name == "SOCKLB_METRICS_ADDR" {
					value = e.Value
				}
			}
		}
		if !strings.Contains(value, "$(HOST_IP)") {
			t.Fatalf("%s: SOCKLB_METRICS_ADDR = %q, want it built from $(HOST_IP)", file, value)
		}
		for _, ip := range []string{"192.0.2.7", "2001:db8::7"} {
			addr := strings.ReplaceAll(value, "$(HOST_IP)", ip)
			clearAgentEnv(t)
			t.Setenv("NODE_NAME", "node-a")
			t.Setenv("SOCKLB_METRICS_ADDR", addr)
			c, _, err := loadWith(t)
			if err != nil {
				t.Errorf("%s with node IP %s: %q refused: %v", file, ip, addr, err)
				continue
			}
			tcp, err := net.ResolveTCPAddr("tcp", c.MetricsAddr)
			if err != nil || tcp.IP.String() != ip || tcp.Port != 9810 {
				t.Errorf("%s with node IP %s: %q resolves to %v (%v), want %s port 9810", file, ip, addr, tcp, err, ip)
			}
		}
	}
}

// TestOutlierFlagsRefuseNonsense: each outlier key out of range, and a
// maximum ejection shorter than the base, fail with the key named.
func TestOutlierFlagsRefuseNonsense(t *testing.T) {
	clearAgentEnv(t)
	for _, tc := range []struct{ arg, want string }{
		{"--outlier-consecutive-failures=0", "outlier-consecutive-failures"},
		{"--outlier-consecutive-failures=1001", "outlier-consecutive-failures"},
		{"--outlier-base-ejection=0s", "outlier-base-ejection"},
		{"--outlier-base-ejection=2h", "outlier-base-ejection"},
		{"--outlier-max-ejection=25h", "outlier-max-ejection"},
		{"--outlier-max-ejection-percent=101", "outlier-max-ejection-percent"},
		{"--outlier-max-ejection-percent=-1", "outlier-max-ejection-percent"},
		{"--outlier-max-ejection=10s", "is shorter than outlier-base-ejection"},
	} {
		_, _, err := loadWith(t, tc.arg)
		wantErrContaining(t, tc.arg, err, tc.want)
	}
}

// The kernel matrix's guests set these for the tests, and the agents the
// tests start inherit them: an agent that refused them would fail every
// agent test there (as SOCKLB_EMULATED once did).
func TestToolingEnvCoversTheTestHarnesses(t *testing.T) {
	for _, name := range []string{testagent.AgentBinEnv, sandbox.AllowMissingFeaturesEnv, sandbox.EmulatedEnv} {
		if !slices.Contains(toolingEnv, name) {
			t.Errorf("%s is set by the test harnesses but is not in toolingEnv", name)
		}
	}
}
