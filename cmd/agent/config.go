package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"

	"github.com/socklb/socklb/pkg/bypass"
	"github.com/socklb/socklb/pkg/lb"
	"github.com/socklb/socklb/pkg/loader"
)

// Config is the agent's typed configuration, the same for every subcommand.
type Config struct {
	// ConfigFile is the --config file the rest was read from, if any.
	ConfigFile   string
	BPFFSPath    string
	CgroupPath   string
	Source       string
	ServicesFile string
	Kubeconfig   string
	NodeName     string
	NodeZone     string
	// BypassNamespaces and BypassPods are label selectors of the pods
	// whose sockets socklb leaves alone; "" selects none.
	BypassNamespaces, BypassPods string
	// ServiceSelector is a label selector in kubectl's syntax; empty
	// selects every Service.
	ServiceSelector string
	HealthAddr      string
	MetricsAddr     string
	PprofAddr       string
	DestroyTCP      bool
	LogFormat       string
	LogLevel        slog.Level
	MinSync         time.Duration
	SyncBurst       int
	// ServiceMapEntries sizes the service map: frontends plus backend
	// slots, double-buffered.
	ServiceMapEntries uint32
	// BackendMapEntries sizes the backend map.
	BackendMapEntries uint32
	// ReconcileInterval is how often the kernel maps are read back in
	// full and drift is repaired.
	ReconcileInterval time.Duration
	// Outlier is passive outlier ejection: on by default (annotation
	// socklb.io/outlier-detection per Service), after so many failed
	// connects in a row, for BaseEjection × n capped at MaxEjection,
	// never more than MaxEjectionPercent of a frontend's backends.
	Outlier                   bool
	OutlierFailures           uint32
	OutlierBaseEjection       time.Duration
	OutlierMaxEjection        time.Duration
	OutlierMaxEjectionPercent int
	// SkipCapabilityCheck turns off the up-front capability check, so
	// tests can show that the kernel itself refuses each missing one.
	SkipCapabilityCheck bool
}

const (
	sourceFile       = "file"
	sourceKubernetes = "kubernetes"

	envPrefix = "SOCKLB_"
	// minMapEntries keeps a typo ("524") from making a map too small to
	// hold even a small cluster; maxMapEntries one ("52428800") from
	// asking the kernel for gigabytes (it refuses with a bare E2BIG).
	minMapEntries = 1024
	maxMapEntries = 1 << 24
	// maxReconcileInterval bounds how long drift in the kernel maps can
	// go unrepaired.
	maxReconcileInterval = time.Hour
)

// toolingEnv are SOCKLB_ variables of socklb's own test tooling, not of the
// agent. The VM guest and the end-to-end harness start agents with them in
// the environment, so they must not make the agent refuse to start.
var toolingEnv = []string{
	"SOCKLB_AGENT_BIN",
	"SOCKLB_ALLOW_MISSING_FEATURES",
	"SOCKLB_E2E_CACHE",
	"SOCKLB_EMULATED",
	"SOCKLB_VM_CACHE",
}

// addFlags defines every key of Config. It is also used on scratch flag
// sets, whose fresh Values type-check one value from the environment or
// the config file exactly as the command line would.
func addFlags(f *pflag.FlagSet) {
	f.String("config", "", "YAML config file; its keys are the flag names")
	f.String("bpffs-path", loader.DefaultBPFFSPath, "directory on bpffs for socklb's pinned maps and links")
	f.String("cgroup-path", "", "cgroup v2 directory to attach to (default: the cgroup2 mount from /proc/mounts)")
	f.String("source", "", "where Services and EndpointSlices come from: kubernetes or file (default: file when --services-file is set, else kubernetes)")
	f.String("services-file", "", "multi-document YAML of v1 Services and discovery.k8s.io/v1 EndpointSlices (--source=file)")
	f.String("kubeconfig", "", "kubeconfig for --source=kubernetes (default: in-cluster config)")
	f.String("node-name", "", "this node's name, for node-local traffic policies and zones (env NODE_NAME)")
	f.String("bypass-namespace-selector", "", "leave the sockets of pods in namespaces matching this label selector alone (e.g. 'istio-injection=enabled'); needs --source=kubernetes")
	f.String("bypass-pod-selector", "", "leave the sockets of pods matching this label selector alone (the pod annotation socklb.io/bypass: \"true\" does it for one pod)")
	f.String("node-zone", "", "this node's topology zone, for zone hints, when the source does not say (the Node's topology.kubernetes.io/zone label wins)")
	f.String("service-selector", "", "only handle Services matching this label selector, e.g. 'env in (prod, qa), tier notin (frontend)'")
	f.String("health-addr", "127.0.0.1:9811", "address of /healthz and /readyz; empty disables")
	f.String("metrics-addr", "127.0.0.1:9810", "address of the Prometheus /metrics endpoint; empty disables")
	f.String("pprof-addr", "", "address of Go's /debug/pprof profiles, for profiling the agent; empty (the default) disables")
	f.Bool("destroy-tcp", false, "also destroy TCP sockets connected to a backend that left its service (UDP ones always are)")
	f.String("log-format", "text", "log format: text or json")
	f.String("log-level", "info", "log level: debug, info, warn or error")
	f.Duration("min-sync-interval", 10*time.Millisecond, "minimum time between two map syncs (bursts of changes collapse)")
	f.Int("sync-burst", 2, "syncs allowed back to back before min-sync-interval applies")
	f.Uint32("service-map-entries", 524288, "entries of the service map: frontends plus backend slots, double-buffered (1024 to 16777216)")
	f.Uint32("backend-map-entries", 262144, "entries of the backend map (1024 to 16777216)")
	f.Duration("reconcile-interval", time.Minute, "how often the kernel maps are read back in full and drift is repaired (at most 1h)")
	f.Bool("outlier-detection", true, "eject a backend from new TCP connects of this node after consecutive failed connects to it (per Service: annotation socklb.io/outlier-detection)")
	f.Uint32("outlier-consecutive-failures", 3, "failed connects in a row that eject a backend (1 to 1000)")
	f.Duration("outlier-base-ejection", 30*time.Second, "the first ejection's length; the n-th lasts n times as long (at most 1h)")
	f.Duration("outlier-max-ejection", 5*time.Minute, "the longest ejection (at least outlier-base-ejection, at most 24h)")
	f.Int("outlier-max-ejection-percent", 50, "the most of a Service's backends ejected at once, in percent (0 to 100; 50 of 3 backends is 1)")
	f.Bool("skip-capability-check", false, "do not check capabilities before loading (tests only)")
	if err := f.MarkHidden("skip-capability-check"); err != nil {
		panic(err) // the flag is defined just above: a bug, not input
	}
}

// rules check a value once it has its flag's type. They read it back from
// a viper so that the same rule serves one source (checkValue) and the
// merged result (loadConfig).
var rules = map[string]func(v *viper.Viper, key string) error{
	"bpffs-path": func(v *viper.Viper, key string) error {
		if v.GetString(key) == "" {
			return errors.New("empty: want a directory on bpffs")
		}
		return nil
	},
	"source": func(v *viper.Viper, key string) error {
		switch v.GetString(key) {
		case "", sourceKubernetes, sourceFile:
			return nil
		}
		return fmt.Errorf("want %s or %s", sourceKubernetes, sourceFile)
	},
	"service-selector": func(v *viper.Viper, key string) error {
		_, err := lb.ParseServiceSelector(v.GetString(key))
		return err
	},
	"bypass-namespace-selector": bypassSelector,
	"bypass-pod-selector":       bypassSelector,
	"health-addr":               hostPort,
	"metrics-addr":              hostPort,
	"pprof-addr":                hostPort,
	"log-format": func(v *viper.Viper, key string) error {
		if s := v.GetString(key); s != "text" && s != "json" {
			return errors.New("want text or json")
		}
		return nil
	},
	"log-level": func(v *viper.Viper, key string) error {
		var l slog.Level
		return l.UnmarshalText([]byte(v.GetString(key)))
	},
	"min-sync-interval": func(v *viper.Viper, key string) error {
		if v.GetDuration(key) < 0 {
			return errors.New("negative")
		}
		return nil
	},
	"sync-burst": func(v *viper.Viper, key string) error {
		if v.GetInt(key) < 1 {
			return errors.New("want at least 1")
		}
		return nil
	},
	"outlier-consecutive-failures": func(v *viper.Viper, key string) error {
		if n := v.GetUint32(key); n < 1 || n > 1000 {
			return errors.New("want at least 1 and at most 1000")
		}
		return nil
	},
	"outlier-base-ejection": func(v *viper.Viper, key string) error {
		if d := v.GetDuration(key); d <= 0 || d > time.Hour {
			return errors.New("want more than 0 and at most 1h")
		}
		return nil
	},
	"outlier-max-ejection": func(v *viper.Viper, key string) error {
		if d := v.GetDuration(key); d <= 0 || d > 24*time.Hour {
			return errors.New("want more than 0 and at most 24h")
		}
		return nil
	},
	"outlier-max-ejection-percent": func(v *viper.Viper, key string) error {
		if n := v.GetInt(key); n < 0 || n > 100 {
			return errors.New("want 0 to 100")
		}
		return nil
	},
	"service-map-entries": mapEntries,
	"backend-map-entries": mapEntries,
	"reconcile-interval": func(v *viper.Viper, key string) error {
		if d := v.GetDuration(key); d <= 0 || d > maxReconcileInterval {
			return fmt.Errorf("want more than 0 and at most %s", maxReconcileInterval)
		}
		return nil
	},
}

func hostPort(v *viper.Viper, key string) error {
	addr := v.GetString(key)
	if addr == "" {
		return nil // disabled
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("want host:port or empty: %w", err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("port %q: want a number up to 65535", port)
	}
	return nil
}

func mapEntries(v *viper.Viper, key string) error {
	if n := v.GetUint32(key); n < minMapEntries || n > maxMapEntries {
		return fmt.Errorf("want at least %d and at most %d", minMapEntries, maxMapEntries)
	}
	return nil
}

// checkValue type-checks raw as flag name would, with a fresh Value, then
// applies the flag's rule. The error does not say where raw came from; the
// caller adds that.
func checkValue(name, raw string) error {
	scratch := pflag.NewFlagSet("check", pflag.ContinueOnError)
	addFlags(scratch)
	fl := scratch.Lookup(name)
	if fl == nil {
		return errors.New("unknown") // callers look the name up first
	}
	// Value.Set, not FlagSet.Set: the latter flattens the cause with %v.
	if err := fl.Value.Set(raw); err != nil {
		return typeError(fl.Value.Type(), err)
	}
	fl.Changed = true
	return checkRule(scratch, name)
}

// checkRule applies name's rule to the value it has in f.
func checkRule(f *pflag.FlagSet, name string) error {
	rule := rules[name]
	if rule == nil {
		return nil
	}
	v := viper.New()
	if err := v.BindPFlag(name, f.Lookup(name)); err != nil {
		return err
	}
	return rule(v, name)
}

// typeError says which type raw failed to be, without repeating strconv's
// function names.
func typeError(typ string, err error) error {
	var ne *strconv.NumError
	if errors.As(err, &ne) {
		err = ne.Err
	}
	switch typ {
	case "int":
		return fmt.Errorf("invalid integer: %w", err)
	case "uint32":
		return fmt.Errorf("invalid unsigned 32-bit integer: %w", err)
	case "bool":
		return fmt.Errorf("invalid boolean (want true or false): %w", err)
	case "duration":
		return fmt.Errorf("invalid duration (want Go syntax such as 100ms or 1m): %w", err)
	}
	return fmt.Errorf("invalid %s: %w", typ, err)
}

// checkFlags applies the rules to the flags given on the command line;
// pflag has already type-checked them.
func checkFlags(f *pflag.FlagSet) error {
	var errs []error
	f.VisitAll(func(fl *pflag.Flag) {
		if !fl.Changed {
			return
		}
		if err := checkRule(f, fl.Name); err != nil {
			errs = append(errs, fmt.Errorf("flag --%s %q: %w", fl.Name, fl.Value.String(), err))
		}
	})
	return errors.Join(errs...)
}

// envName is the SOCKLB_ variable viper reads for a flag.
func envName(flag string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// checkEnv rejects SOCKLB_ variables that name no flag (a typo would
// otherwise leave the default in force) and type-checks the others.
func checkEnv(f *pflag.FlagSet, environ []string) error {
	byEnv := map[string]string{}
	f.VisitAll(func(fl *pflag.Flag) { byEnv[envName(fl.Name)] = fl.Name })
	var errs []error
	for _, kv := range environ {
		name, value, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, envPrefix) || slices.Contains(toolingEnv, name) {
			continue
		}
		flag, ok := byEnv[name]
		if !ok {
			errs = append(errs, fmt.Errorf("%s: unknown variable%s", name, suggest(name, mapKeys(byEnv))))
			continue
		}
		if err := checkValue(flag, value); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %w", name, value, err))
		}
	}
	return errors.Join(errs...)
}

// readConfigFile reads the --config file, if any, strictly: every key must
// be a flag name and every value a single value of that flag's type. Only
// then does viper see it, from the same bytes.
func readConfigFile(v *viper.Viper, f *pflag.FlagSet) error {
	path := v.GetString("config")
	if path == "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config %s: %w", path, err)
	}
	if err := checkConfigFile(f, data); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	v.SetConfigType("yaml")
	if err := v.ReadConfig(bytes.NewReader(data)); err != nil {
		return fmt.Errorf("read config %s: %w", path, err)
	}
	return nil
}

// checkConfigFile checks a config file's YAML; errors name key and line.
func checkConfigFile(f *pflag.FlagSet, data []byte) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // empty, or only comments
		}
		return fmt.Errorf("parse YAML: %w", err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return fmt.Errorf("line %d: a second YAML document: want one mapping of flag names to values", extra.Line)
	}
	if len(doc.Content) == 0 {
		return nil
	}
	m := doc.Content[0]
	if m.Kind == yaml.ScalarNode && m.Tag == "!!null" {
		return nil
	}
	if m.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: want a mapping of flag names to values", m.Line)
	}
	var names []string
	f.VisitAll(func(fl *pflag.Flag) { names = append(names, fl.Name) })
	seen := map[string]int{}
	var errs []error
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, val := m.Content[i], m.Content[i+1]
		key := k.Value
		if line, dup := seen[key]; dup {
			errs = append(errs, fmt.Errorf("key %q (line %d): also set on line %d", key, k.Line, line))
			continue
		}
		seen[key] = k.Line
		if key == "config" {
			errs = append(errs, fmt.Errorf("key %q (line %d): a config file cannot name another", key, k.Line))
			continue
		}
		if f.Lookup(key) == nil {
			errs = append(errs, fmt.Errorf("key %q (line %d): unknown%s", key, k.Line, suggest(key, names)))
			continue
		}
		if val.Kind == yaml.AliasNode && val.Alias != nil {
			val = val.Alias
		}
		switch {
		case val.Kind != yaml.ScalarNode:
			errs = append(errs, fmt.Errorf("key %q (line %d): want a single value, not a list or mapping", key, val.Line))
			continue
		case val.Tag == "!!null":
			// Null is not "the default" nor "empty": say which is meant.
			errs = append(errs, fmt.Errorf(`key %q (line %d): no value: remove the key for the default, or write "" for empty`, key, val.Line))
			continue
		}
		if err := checkValue(key, val.Value); err != nil {
			errs = append(errs, fmt.Errorf("key %q (line %d): value %q: %w", key, val.Line, val.Value, err))
		}
	}
	return errors.Join(errs...)
}

// loadConfig turns viper's view of flags, env and file into a Config. It
// is the only place that does; it checks the merged values once more, and
// what needs more than one key.
func loadConfig(v *viper.Viper) (Config, error) {
	c := Config{
		ConfigFile:          v.GetString("config"),
		BPFFSPath:           v.GetString("bpffs-path"),
		CgroupPath:          v.GetString("cgroup-path"),
		Source:              v.GetString("source"),
		ServicesFile:        v.GetString("services-file"),
		Kubeconfig:          v.GetString("kubeconfig"),
		NodeName:            v.GetString("node-name"),
		NodeZone:            v.GetString("node-zone"),
		BypassNamespaces:    v.GetString("bypass-namespace-selector"),
		BypassPods:          v.GetString("bypass-pod-selector"),
		HealthAddr:          v.GetString("health-addr"),
		MetricsAddr:         v.GetString("metrics-addr"),
		PprofAddr:           v.GetString("pprof-addr"),
		ServiceSelector:     v.GetString("service-selector"),
		DestroyTCP:          v.GetBool("destroy-tcp"),
		LogFormat:           v.GetString("log-format"),
		MinSync:             v.GetDuration("min-sync-interval"),
		SyncBurst:           v.GetInt("sync-burst"),
		ServiceMapEntries:   v.GetUint32("service-map-entries"),
		BackendMapEntries:   v.GetUint32("backend-map-entries"),
		ReconcileInterval:   v.GetDuration("reconcile-interval"),
		SkipCapabilityCheck: v.GetBool("skip-capability-check"),

		Outlier:                   v.GetBool("outlier-detection"),
		OutlierFailures:           v.GetUint32("outlier-consecutive-failures"),
		OutlierBaseEjection:       v.GetDuration("outlier-base-ejection"),
		OutlierMaxEjection:        v.GetDuration("outlier-max-ejection"),
		OutlierMaxEjectionPercent: v.GetInt("outlier-max-ejection-percent"),
	}
	var errs []error
	keys := make([]string, 0, len(rules))
	for k := range rules {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if err := rules[k](v, k); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %w", k, v.GetString(k), err))
		}
	}
	// Checked by its rule above; parsed here only when valid.
	if err := c.LogLevel.UnmarshalText([]byte(v.GetString("log-level"))); err != nil {
		c.LogLevel = slog.LevelInfo
	}
	if c.Source == "" {
		c.Source = sourceKubernetes
		if c.ServicesFile != "" {
			c.Source = sourceFile
		}
	}
	if c.OutlierMaxEjection < c.OutlierBaseEjection {
		errs = append(errs, fmt.Errorf("outlier-max-ejection %s is shorter than outlier-base-ejection %s",
			c.OutlierMaxEjection, c.OutlierBaseEjection))
	}
	if c.Bypassing() && c.Source != sourceKubernetes {
		errs = append(errs, errors.New("--bypass-namespace-selector and --bypass-pod-selector need --source=kubernetes: the pods come from the API server"))
	}
	if c.Source == sourceFile && c.ServicesFile == "" {
		errs = append(errs, errors.New("--services-file is required with --source=file"))
	}
	return c, errors.Join(errs...)
}

// errBypassNeedsNode: a bypass selector without the node name, which the
// agent needs to watch its own pods.
var errBypassNeedsNode = errors.New("--bypass-namespace-selector and --bypass-pod-selector need --node-name (or $NODE_NAME)")

func bypassSelector(v *viper.Viper, key string) error {
	_, err := bypass.ParseSelector(v.GetString(key))
	return err
}

// Bypassing reports whether a bypass selector is set. The annotation
// needs none: with the Kubernetes source and a node name the agent
// watches this node's pods anyway.
func (c Config) Bypassing() bool {
	return strings.TrimSpace(c.BypassNamespaces) != "" || strings.TrimSpace(c.BypassPods) != ""
}

// suggest returns ` (did you mean "x"?)` for the candidate closest to name,
// or "" when none is close.
func suggest(name string, candidates []string) string {
	best, bestDist := "", 4 // more edits than this is not a typo
	norm := func(s string) string { return strings.ToLower(strings.ReplaceAll(s, "_", "-")) }
	for _, c := range candidates {
		d := editDistance(norm(name), norm(c))
		if d < bestDist || (d == bestDist && c < best) {
			best, bestDist = c, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func mapKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
