//go:build nodee2e && conformance

package e2e

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/socklb/socklb/tests/buildcache"
	"github.com/socklb/socklb/tests/conformance"
	"github.com/socklb/socklb/tests/e2e/cluster"
	"github.com/socklb/socklb/tests/node/harness"
)

// conformanceControllers are the controllers the specs need beyond the
// node suite's: ReplicationControllers (the services' backends), the
// Endpoints controller and its mirror (specs read Endpoints), and the pod
// garbage collector.
var conformanceControllers = []string{
	"replicationcontroller-controller", "endpoints-controller",
	"endpointslice-mirroring-controller", "pod-garbage-collector-controller",
}

// controlEnv, set to 1, makes TestConformance the control run: the same
// node and specs, but socklb is taken off the node before e2e.test starts.
// It passes only if some listed spec fails, which shows that the specs'
// results depend on socklb.
const controlEnv = "SOCKLB_CONFORMANCE_CONTROL"

// conformanceTimeout bounds the e2e.test run.
const conformanceTimeout = 40 * time.Minute

// TestConformance runs Kubernetes' own Services conformance specs
// (conformance.Focus, from the upstream e2e.test of the cluster's
// release) against the test node, with no kube-proxy and socklb deployed
// from deploy/ (the privileged DaemonSet), CoreDNS as kube-dns. A dry run
// lists the specs first; every listed spec must run and pass, and no
// suite node may fail. The JUnit report is kept in the build cache
// (conformance/junit-<time>.xml).
func TestConformance(t *testing.T) {
	control := os.Getenv(controlEnv) == "1"
	if control {
		t.Logf("%s=1: the control run, socklb taken off the node before the specs run", controlEnv)
	}
	repo := repoRoot(t)
	archive := agentArchive(t, repo)
	ctx := t.Context()
	bins, err := conformance.EnsureBinaries(ctx, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	rootfs, err := conformance.EnsureRootfs(ctx, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	agnhost := filepath.Join(work, "agnhost-image.tar")
	if err := conformance.WriteAgnhostImage(agnhost, bins, rootfs); err != nil {
		t.Fatal(err)
	}
	repoList := filepath.Join(work, "repo-list.yaml")
	if err := os.WriteFile(repoList, []byte(conformance.RepoList()), 0o644); err != nil {
		t.Fatal(err)
	}
	listed := dryRun(t, bins, repoList, work)
	t.Logf("dry run: %d specs match %s", len(listed), conformance.Focus)
	if len(listed) == 0 {
		t.Fatal("the dry run lists no spec")
	}

	var fp *harness.Footprint
	t.Run("node", func(t *testing.T) {
		n := harness.Start(t, harness.Options{
			ClusterDNS: []string{clusterDNS},
			Images:     []string{archive, agnhost},
			Cluster: cluster.Options{ControllerManagerArgs: []string{
				"--controllers=" + strings.Join(conformanceControllers, ",")}},
		})
		fp = n.Footprint()
		e := &nodeEnv{n: n, fp: fp, repo: repo}
		n.ImportBinaryImage(t, harness.ImageSpec{Binary: n.Binaries.CoreDNS, Path: "/coredns"}, corednsImage)
		// The specs' own pause image, should one name it, is the node's.
		n.ImportBinaryImage(t, harness.ImageSpec{Binary: n.Binaries.Pause, Path: "/pause", User: "65535:65535"},
			conformance.PauseImage(harness.PauseVersion))
		e.deployAgent(t, "privileged")
		manifest := readRepoFile(t, repo, "tests/node/deploy/coredns.yaml")
		e.apply(t, "coredns", fill(t, manifest, map[string]string{"COREDNS_IMAGE": corednsImage, "CLUSTER_DNS": clusterDNS}))
		e.waitDeployment(t, "kube-system", "coredns")
		if !control {
			e.runConformance(t, bins, repoList, work, listed)
			return
		}
		// The control: socklb taken off the node as the README says,
		// after CoreDNS came up through it (its pods stay Ready, so the
		// suite's check of kube-system passes). Nothing translates a
		// ClusterIP or a NodePort now; specs that need one must fail.
		e.takeOffSocklb(t)
		if progs := bpftoolCgroup(t, e.n.Cgroup2Dir); len(progs) != 0 {
			t.Fatalf("control: programs still attached to the node's cgroup root: %+v", progs)
		}
		e.runControl(t, bins, repoList, work, listed)
	})
	if fp == nil {
		t.Fatal("the node did not come up")
	}
	for _, l := range fp.Leftovers() {
		t.Errorf("left after teardown: %s", l)
	}
}

// e2eArgs are the flags of every e2e.test run: the focus, a JUnit report
// in dir, no colour.
func e2eArgs(dir string, extra ...string) []string {
	return append([]string{
		"--ginkgo.focus=" + conformance.Focus,
		"--ginkgo.junit-report=" + filepath.Join(dir, "junit.xml"),
		"--ginkgo.no-color",
		"--ginkgo.timeout=" + conformanceTimeout.String(),
	}, extra...)
}

// dryRun lists the focused specs: e2e.test's dry run needs no cluster.
func dryRun(t *testing.T, bins *conformance.Binaries, repoList, work string) []string {
	dir := filepath.Join(work, "dry-run")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins.E2ETest, e2eArgs(dir, "--ginkgo.dry-run")...)
	cmd.Env = append(os.Environ(), "KUBE_TEST_REPO_LIST="+repoList)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("e2e.test --ginkgo.dry-run: %v\n%s", err, lastLines(out, 30))
	}
	return conformance.Listed(readReport(t, filepath.Join(dir, "junit.xml")))
}

// runConformance runs the specs and fails on any problem
// conformance.Check finds.
func (e *nodeEnv) runConformance(t *testing.T, bins *conformance.Binaries, repoList, work string, listed []string) {
	results, tail, runErr := e.runE2E(t, bins, repoList, work, listed)
	for _, p := range conformance.Check(listed, results) {
		t.Errorf("conformance: %s", p)
	}
	if runErr != nil && !t.Failed() {
		t.Errorf("e2e.test failed (%v) though every spec passed:\n%s", runErr, lastLines(tail, 40))
	}
}

// runControl runs the specs without socklb and fails if none of them
// failed: then passing them would say nothing about socklb.
func (e *nodeEnv) runControl(t *testing.T, bins *conformance.Binaries, repoList, work string, listed []string) {
	results, _, _ := e.runE2E(t, bins, repoList, work, listed)
	failed := 0
	for _, r := range results {
		if r.Spec() && r.Ran() && r.Status != "passed" {
			failed++
		}
	}
	t.Logf("control: without socklb, %d of %d listed specs did not pass", failed, len(listed))
	if failed == 0 {
		t.Errorf("control: every spec passed without socklb on the node: the run does not test socklb")
	}
}

// runE2E runs the specs inside the node (the API server's address is the
// node's), prints ginkgo's summary and each spec's result, keeps the
// report, and returns the results, the tail of e2e.test's output and its
// exit error.
func (e *nodeEnv) runE2E(t *testing.T, bins *conformance.Binaries, repoList, work string, listed []string) ([]conformance.Result, []byte, error) {
	dir := filepath.Join(work, "run")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), conformanceTimeout+5*time.Minute)
	defer cancel()
	logFile := filepath.Join(dir, "e2e.log")
	log, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	cmd := e.n.Command(ctx, bins.E2ETest, e2eArgs(dir,
		"--kubeconfig="+e.n.Kubeconfig,
		"--kubectl-path="+e.n.Binaries.Kubectl,
		"--report-dir="+dir,
		"--dump-logs-on-failure=false",
	)...)
	cmd.Env = append(cmd.Env, "KUBE_TEST_REPO_LIST="+repoList, "HOME="+work)
	var tail bytes.Buffer
	cmd.Stdout = io.MultiWriter(log, tailBuffer{buf: &tail, max: 256 << 10})
	cmd.Stderr = cmd.Stdout
	start := time.Now()
	runErr := cmd.Run()
	took := time.Since(start).Round(time.Second)
	results := readReport(t, filepath.Join(dir, "junit.xml"))
	keepReport(t, filepath.Join(dir, "junit.xml"), logFile)

	t.Logf("e2e.test (%s) ran in %v, exit: %v; ginkgo's summary:\n%s", conformance.Focus, took, runErr, summary(tail.Bytes()))
	passed := 0
	for _, r := range results {
		if r.Spec() && r.Ran() {
			t.Logf("  %-8s %7v  %s", r.Status, r.Took, r.Name)
			if r.Status == "passed" {
				passed++
			}
		}
	}
	t.Logf("conformance: %d of %d listed specs passed", passed, len(listed))
	return results, tail.Bytes(), runErr
}

// readReport reads a JUnit report e2e.test wrote.
func readReport(t *testing.T, path string) []conformance.Result {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("e2e.test wrote no report: %v", err)
	}
	defer f.Close()
	res, err := conformance.ReadJUnit(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return res
}

// keepReport copies the report and e2e.test's log to the build cache's
// conformance directory, named by the time of the run.
func keepReport(t *testing.T, report, log string) {
	t.Helper()
	cache, err := buildcache.CacheDir()
	if err != nil {
		t.Error(err)
		return
	}
	dir := filepath.Join(cache, "conformance")
	stamp := time.Now().UTC().Format("20060102T150405Z")
	for src, name := range map[string]string{report: "junit-" + stamp + ".xml", log: "e2e-" + stamp + ".log"} {
		b, err := os.ReadFile(src)
		if err == nil {
			err = os.MkdirAll(dir, 0o755)
		}
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, name), b, 0o644)
		}
		if err != nil {
			t.Errorf("keep %s: %v", name, err)
			continue
		}
		t.Logf("kept %s", filepath.Join(dir, name))
	}
}

// summary is ginkgo's closing block: from "Ran N of M Specs" on.
func summary(out []byte) string {
	if i := bytes.LastIndex(out, []byte("Ran ")); i >= 0 {
		return strings.TrimSpace(string(out[i:]))
	}
	return string(lastLines(out, 20))
}

func lastLines(b []byte, n int) []byte {
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return bytes.Join(lines, []byte("\n"))
}

// tailBuffer keeps the last bytes written to it.
type tailBuffer struct {
	buf *bytes.Buffer
	max int
}

func (w tailBuffer) Write(p []byte) (int, error) {
	w.buf.Write(p)
	if over := w.buf.Len() - w.max; over > 0 {
		w.buf.Next(over)
	}
	return len(p), nil
}
