package bypass

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/socklb/socklb/internal/testlog"
)

func pod(ns, name, uid string, labels, annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(uid),
		Labels: labels, Annotations: annotations}}
}

func mustSelector(t *testing.T, s string) Rules {
	t.Helper()
	sel, err := ParseSelector(s)
	if err != nil {
		t.Fatal(err)
	}
	return Rules{Namespaces: sel, Pods: sel}
}

func TestDecide(t *testing.T) {
	mesh := mustSelector(t, "istio-injection=enabled")
	hostNet := pod("a", "h", "u", nil, map[string]string{Annotation: "true"})
	hostNet.Spec.HostNetwork = true
	for _, tt := range []struct {
		name      string
		pod       *corev1.Pod
		ns        map[string]string
		rules     Rules
		bypass    bool
		why, warn string
		unknown   bool
	}{
		{name: "nothing asks", pod: pod("a", "p", "u", nil, nil), ns: map[string]string{}, rules: mesh},
		{name: "namespace not known yet: undecided", pod: pod("a", "p", "u", nil, nil), rules: mesh, why: "undecided", unknown: true},
		{name: "namespace not needed: the pod selector decides", pod: pod("a", "p", "u", map[string]string{"istio-injection": "enabled"}, nil),
			rules: mesh, bypass: true, why: "--bypass-pod-selector"},
		{name: "no selectors select nothing", pod: pod("a", "p", "u", map[string]string{"x": "y"}, nil), ns: map[string]string{}},
		{name: "annotation true", pod: pod("a", "p", "u", nil, map[string]string{Annotation: "true"}), bypass: true, why: "annotation"},
		{name: "pod selector", pod: pod("a", "p", "u", map[string]string{"istio-injection": "enabled"}, nil), rules: mesh,
			bypass: true, why: "--bypass-pod-selector"},
		{name: "namespace selector", pod: pod("a", "p", "u", nil, nil), ns: map[string]string{"istio-injection": "enabled"},
			rules: mesh, bypass: true, why: "--bypass-namespace-selector"},
		{name: "annotation false opts back in", pod: pod("a", "p", "u", nil, map[string]string{Annotation: "false"}),
			ns: map[string]string{"istio-injection": "enabled"}, rules: mesh, why: `"false"`},
		{name: "a bad annotation is ignored with a warning", pod: pod("a", "p", "u", nil, map[string]string{Annotation: "yes"}),
			ns: map[string]string{"istio-injection": "enabled"}, rules: mesh, bypass: true, why: "namespace", warn: `"yes" is not true or false`},
		{name: "hostNetwork never", pod: hostNet, why: "hostNetwork"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := Decide(tt.pod, tt.ns, tt.rules)
			if d.Bypass != tt.bypass || !strings.Contains(d.Why, tt.why) || !strings.Contains(d.Warning, tt.warn) ||
				(tt.warn == "" && d.Warning != "") || d.NamespaceUnknown != tt.unknown {
				t.Errorf("%+v; want bypass %v, why containing %q, warning %q", d, tt.bypass, tt.why, tt.warn)
			}
		})
	}
	if _, err := ParseSelector("a in (b"); err == nil {
		t.Error("a broken selector parsed")
	}
	if sel, err := ParseSelector("  "); sel != nil || err != nil {
		t.Errorf("a blank selector: %v, %v; want nil (nothing)", sel, err)
	}
}

const (
	uidA = "0d1e2f30-4a5b-4c6d-8e9f-a0b1c2d3e4f5"
	uidB = "11111111-2222-3333-4444-555555555555"
	uidC = "33333333-2222-3333-4444-555555555555"
)

func TestPodUID(t *testing.T) {
	for name, want := range map[string]string{
		"pod" + uidA: uidA,
		"kubepods-besteffort-pod" + strings.ReplaceAll(uidB, "-", "_") + ".slice": uidB,
		"kubepods-pod" + strings.ReplaceAll(uidA, "-", "_") + ".slice":            uidA,
		"podcast":                  "",
		"burstable":                "",
		"cri-containerd-abc":       "",
		"pod" + uidA + "-x":        "",
		"kubepods-burstable.slice": "",
	} {
		got, ok := podUID(name)
		if string(got) != want || ok != (want != "") {
			t.Errorf("podUID(%q) = %q, %v; want %q", name, got, ok, want)
		}
	}
}

// tree makes a fake cgroup tree: pod dirs with container dirs whose
// cgroup.procs list pids.
func tree(t *testing.T, procs map[string][]string) string {
	t.Helper()
	root := t.TempDir()
	for dir, pids := range procs {
		p := filepath.Join(root, dir)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, "cgroup.procs"), []byte(strings.Join(pids, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

type fakeTable struct {
	mu  sync.Mutex
	set map[uint64]bool
	err error
}

func (f *fakeTable) Cookies() ([]uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []uint64
	for c := range f.set {
		out = append(out, c)
	}
	slices.Sort(out)
	return out, nil
}

func (f *fakeTable) Put(c uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	f.set[c] = true
	return nil
}

func (f *fakeTable) Delete(c uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.set, c)
	return nil
}

func TestKeeperRound(t *testing.T) {
	root := tree(t, map[string][]string{
		"kubepods/besteffort/pod" + uidA + "/ctr1": {"100"}, // still in the node's netns: skipped
		"kubepods/besteffort/pod" + uidA + "/ctr2": {"101"},
		"kubepods/pod" + uidB + "/ctr":             {"200"},
	})
	pods := []*corev1.Pod{
		pod("mesh", "a", uidA, nil, nil),
		pod("plain", "b", uidB, nil, map[string]string{Annotation: "true"}),
		pod("mesh", "c", "22222222-2222-3333-4444-555555555555", nil, nil), // no cgroup yet
	}
	nsLabels := map[string]map[string]string{"mesh": {"istio-injection": "enabled"}, "plain": {}}
	table := &fakeTable{set: map[uint64]bool{999: true}} // a previous agent's entry, no longer wanted
	var mu sync.Mutex                                    // the informers' caches are safe for concurrent use; so are these
	k, err := New(Options{
		Rules: mustSelector(t, "istio-injection=enabled"), CgroupRoot: root, Table: table,
		Pods: func() []*corev1.Pod { mu.Lock(); defer mu.Unlock(); return slices.Clone(pods) },
		Namespace: func(n string) (map[string]string, bool) {
			mu.Lock()
			defer mu.Unlock()
			l, ok := nsLabels[n]
			return l, ok
		},
		Synced: func() bool { return true },
	})
	if err != nil {
		t.Fatal(err)
	}
	k.find.self = 7
	k.find.linkOf, k.find.startOf = pidLink, pidOrder
	k.find.cookieOf = func(pid int) (uint64, error) {
		switch pid {
		case 100:
			return 7, nil
		case 101:
			return 11, nil
		case 200:
			return 22, nil
		}
		return 0, errors.New("no such process")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx) }()
	waitFor(t, "pods a and b bypassed, the stale entry gone", func() bool {
		got, _ := table.Cookies()
		return slices.Equal(got, []uint64{11, 22})
	})
	if e := k.Entries(); len(e) != 2 || e[0].Pod != "mesh/a" || e[1].Pod != "plain/b" {
		t.Errorf("entries %+v", e)
	}
	// The namespace loses its label: a is no longer bypassed.
	mu.Lock()
	nsLabels["mesh"] = map[string]string{}
	mu.Unlock()
	k.Trigger()
	waitFor(t, "pod a no longer bypassed", func() bool {
		got, _ := table.Cookies()
		return slices.Equal(got, []uint64{22})
	})
	// Pod b goes: its entry too.
	mu.Lock()
	pods = pods[:1]
	mu.Unlock()
	k.Trigger()
	waitFor(t, "pod b's entry gone", func() bool {
		got, _ := table.Cookies()
		return len(got) == 0
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// An agent that may not read a pod's namespace says so for that pod
// (once) and does not poll it as a sandbox still starting.
func TestKeeperCannotSee(t *testing.T) {
	hidden, denied := "kubepods/besteffort/pod"+uidA, "kubepods/besteffort/pod"+uidB
	root := tree(t, map[string][]string{
		hidden + "/pause":              {"0"}, // outside the agent's PID namespace
		hidden + "/ctr":                {"0", "0"},
		denied + "/pause":              {"300"}, // pause as 65535: EACCES without CAP_SYS_PTRACE
		"kubepods/pod" + uidC + "/ctr": {},
	})
	f := &finder{root: root, self: 7, linkOf: pidLink, startOf: pidOrder, cookieOf: func(pid int) (uint64, error) {
		return 0, fmt.Errorf("open netns /proc/%d/ns/net: %w", pid, syscall.EACCES)
	}}
	for _, tt := range []struct{ dir, want string }{
		{hidden, "none of its processes is in the agent's PID namespace (cgroup.procs lists 3 as 0; the agent needs hostPID: true)"},
		{denied, "1 of its processes: open netns /proc/300/ns/net: permission denied"},
	} {
		_, err := f.netnsOf(filepath.Join(root, tt.dir))
		if !errors.Is(err, errCannotSee) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("netnsOf(%s) = %v; want errCannotSee saying %q", tt.dir, err, tt.want)
		}
	}
	if _, err := f.netnsOf(filepath.Join(root, "kubepods/pod"+uidC)); !errors.Is(err, errNoProcess) {
		t.Errorf("netnsOf of a pod with no process yet = %v; want errNoProcess", err)
	}

	var logs strings.Builder
	pods := []*corev1.Pod{
		pod("a", "hidden", uidA, nil, map[string]string{Annotation: "true"}),
		pod("a", "denied", uidB, nil, map[string]string{Annotation: "true"}),
	}
	k, err := New(Options{CgroupRoot: root, Table: &fakeTable{set: map[uint64]bool{}},
		Pods:      func() []*corev1.Pod { return pods },
		Namespace: func(string) (map[string]string, bool) { return nil, false },
		Synced:    func() bool { return true },
		Log:       slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	k.find = f
	// The first second: polled, as for a process in the middle of an
	// exec, and not warned about.
	next, err := k.round()
	if err != nil {
		t.Fatal(err)
	}
	if next != k.opts.Poll || strings.Contains(logs.String(), "not bypassed") {
		t.Errorf("in the first second: next round in %v, log %q; want both polled, no warning", next, logs.String())
	}
	for uid := range k.blind {
		k.blind[uid] = time.Now().Add(-2 * time.Second)
	}
	for range 3 {
		if next, err = k.round(); err != nil {
			t.Fatal(err)
		}
	}
	if next != k.opts.Resync || len(k.Entries()) != 0 {
		t.Errorf("next round in %v, entries %+v; want a resync's, none: waiting cannot help", next, k.Entries())
	}
	for _, p := range []string{"a/hidden", "a/denied"} {
		if n := strings.Count(logs.String(), "pod not bypassed as asked\" pod="+p+" "); n != 1 {
			t.Errorf("pod %s: %d warnings in three rounds, want 1:\n%s", p, n, logs.String())
		}
	}
}

// A pod that waits for its network namespace is polled fast for
// fastWait; then one whose cgroup exists (a sandbox that may start at any
// moment) at slowPoll, any other in each round only, and one the kubelet
// says runs is warned about once. A pod whose namespace's labels are not
// known yet waits too (undecided), and is bypassed once they are.
func TestKeeperWaits(t *testing.T) {
	root := tree(t, map[string][]string{"kubepods/pod" + uidB + "/ctr": {"200"}, "kubepods/pod" + uidC + "/ctr": {}})
	running := pod("a", "nocgroup", uidA, nil, map[string]string{Annotation: "true"})
	running.Status.Phase = corev1.PodRunning
	pods := []*corev1.Pod{running, pod("late", "b", uidB, nil, nil), pod("a", "volumes", uidC, nil, map[string]string{Annotation: "true"})}
	var mu sync.Mutex
	nsKnown := false
	var logs strings.Builder
	k, err := New(Options{Rules: mustSelector(t, "istio-injection=enabled"), CgroupRoot: root,
		Table: &fakeTable{set: map[uint64]bool{}},
		Pods:  func() []*corev1.Pod { return pods },
		Pod: func(ns, name string) (*corev1.Pod, bool) {
			i := slices.IndexFunc(pods, func(p *corev1.Pod) bool { return p.Namespace == ns && p.Name == name })
			if i < 0 {
				return nil, false
			}
			return pods[i], true
		},
		Namespace: func(n string) (map[string]string, bool) {
			mu.Lock()
			defer mu.Unlock()
			if n == "late" && nsKnown {
				return map[string]string{"istio-injection": "enabled"}, true
			}
			return nil, n == "a"
		},
		Synced: func() bool { return true },
		Log:    slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	oneNamespace(k, 22)
	next, err := k.round()
	if err != nil {
		t.Fatal(err)
	}
	if next != k.opts.Poll || k.Unresolved() != 3 || strings.Contains(logs.String(), "not bypassed") {
		t.Errorf("at first: next round in %v, unresolved %d, log %q; want all polled, no warning", next, k.Unresolved(), logs.String())
	}
	if _, d, err := k.Client("late", "b"); err != nil || d.Bypass || !strings.Contains(d.Why, "undecided") {
		t.Errorf("client late/b: %+v, %v; want undecided", d, err)
	}
	if _, _, err := k.Client("a", "volumes"); !errors.Is(err, ErrNotStarted) {
		t.Errorf("client a/volumes: %v; want ErrNotStarted", err)
	}
	for uid := range k.waiting {
		k.waiting[uid] = time.Now().Add(-fastWait - time.Second)
	}
	for range 3 {
		if next, err = k.round(); err != nil {
			t.Fatal(err)
		}
	}
	if next != slowPoll || k.Unresolved() != 3 {
		t.Errorf("past fastWait: next round in %v, unresolved %d; want %v (a cgroup without its sandbox yet), 3 unresolved",
			next, k.Unresolved(), slowPoll)
	}
	if n := strings.Count(logs.String(), "pod not bypassed as asked\" pod=a/nocgroup "); n != 1 ||
		!strings.Contains(logs.String(), "is --cgroup-path the kubelet's cgroup root?") {
		t.Errorf("%d warnings for the running pod without a cgroup, want 1 naming --cgroup-path:\n%s", n, logs.String())
	}
	if strings.Contains(logs.String(), "pod=late/b") || strings.Contains(logs.String(), "pod=a/volumes") {
		t.Errorf("a pod not running was warned about:\n%s", logs.String())
	}
	mu.Lock()
	nsKnown = true
	mu.Unlock()
	if _, err := k.round(); err != nil {
		t.Fatal(err)
	}
	if e := k.Entries(); len(e) != 1 || e[0].Pod != "late/b" || e[0].Cookie != 22 || k.Unresolved() != 2 {
		t.Errorf("once the namespace is known: entries %+v, unresolved %d; want late/b bypassed", e, k.Unresolved())
	}
	// A resync that cannot find the namespace again keeps the entry;
	// so does a namespace that drops out of the cache.
	k.find.cookieOf = func(int) (uint64, error) { return 0, errors.New("no such process") }
	k.refresh = true
	mu.Lock()
	nsKnown = false
	mu.Unlock()
	if _, err := k.round(); err != nil {
		t.Fatal(err)
	}
	if e := k.Entries(); len(e) != 1 || e[0].Cookie != 22 {
		t.Errorf("after a resync that found nothing: entries %+v; want late/b kept", e)
	}
}

// A round that fails is retried after a second, not at the poll rate of
// the pods that wait.
func TestKeeperBacksOff(t *testing.T) {
	root := tree(t, map[string][]string{"kubepods/pod" + uidB + "/ctr": {"200"}})
	pods := []*corev1.Pod{pod("a", "b", uidB, nil, map[string]string{Annotation: "true"}),
		pod("a", "waits", uidA, nil, map[string]string{Annotation: "true"})}
	var logs testlog.Buffer
	k, err := New(Options{CgroupRoot: root, Table: failingTable{},
		Pods:      func() []*corev1.Pod { return pods },
		Namespace: func(string) (map[string]string, bool) { return map[string]string{}, true },
		Synced:    func() bool { return true },
		Log:       slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	oneNamespace(k, 22)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := k.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(logs.String(), "bypass: update failed"); n != 1 || !strings.Contains(logs.String(), "retry_in=1s") {
		t.Errorf("%d failed rounds logged in 0.5 s, want 1 (retried after 1 s):\n%s", n, logs.String())
	}
	if k.Unresolved() != 1 {
		t.Errorf("unresolved %d after a failed write, want 1 (the pod without a cgroup)", k.Unresolved())
	}
}

type failingTable struct{}

func (failingTable) Cookies() ([]uint64, error) { return nil, nil }
func (failingTable) Put(uint64) error           { return errors.New("map full") }
func (failingTable) Delete(uint64) error        { return nil }

// pidLink stands for the nsfs links of fake processes: one namespace
// per process, so every one is read.
func pidLink(pid int) (string, error) { return fmt.Sprintf("net:[%d]", pid), nil }

// A container with network namespaces of its own (unshare -n; Docker in
// Docker, whose inner containers nest cgroups) does not make its
// namespace the pod's, whatever order the cgroups are listed in and
// whatever the cookies' order (the kernel hands them out in batches per
// CPU, so a newer namespace may have a lower one): each container votes
// for its first process's namespace, the most voted wins, on a tie the
// one whose voter started first.
func TestNetnsOfNested(t *testing.T) {
	pod := "kubepods/pod" + uidA
	// PIDs stand for start order (pidOrder); the pod's namespace has the
	// highest cookie.
	cookies := map[int]uint64{10: 900, 11: 900, 20: 900, 30: 300, 31: 300, 32: 301, 40: 7}
	reads := 0
	f := &finder{self: 7, startOf: pidOrder, cookieOf: func(pid int) (uint64, error) {
		reads++
		if c, ok := cookies[pid]; ok {
			return c, nil
		}
		return 0, errors.New("no such process")
	}, linkOf: func(pid int) (string, error) {
		if c, ok := cookies[pid]; ok {
			return fmt.Sprintf("net:[%d]", c), nil
		}
		return "", errors.New("no such process")
	}}
	for _, tt := range []struct {
		name  string
		procs map[string][]string
		want  uint64
		reads int
	}{
		{"a container in a namespace of its own, listed first", map[string][]string{
			pod + "/0aaa-nested": {"30"}, pod + "/fff-pause": {"10"}}, 900, 2},
		{"Docker in Docker: inner cgroups in other namespaces", map[string][]string{
			pod + "/0aaa-dind":                          {"20"},
			pod + "/0aaa-dind/inner/init.scope":         {"30"},
			pod + "/0aaa-dind/inner/kubelet.service":    {"31"},
			pod + "/0aaa-dind/inner/containerd.service": {"32"},
			pod + "/0aaa-dind/other/init.scope":         {"32"},
			pod + "/fff-pause":                          {"10", "11"}}, 900, 3},
		{"two containers of their own against the sandbox and one", map[string][]string{
			pod + "/0aaa": {"30"}, pod + "/0bbb": {"32"}, pod + "/fff-pause": {"10"}, pod + "/ccc": {"20"}}, 900, 3},
		{"a node process in the pod's cgroup is never taken", map[string][]string{
			pod + "/0aaa": {"40"}, pod + "/fff-pause": {"30"}}, 300, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			root := tree(t, tt.procs)
			f.root, reads = root, 0
			got, err := f.netnsOf(filepath.Join(root, pod))
			if err != nil || got != tt.want || reads != tt.reads {
				t.Errorf("netnsOf = %d, %v, %d cookies read; want %d, %d read (one per namespace)", got, err, reads, tt.want, tt.reads)
			}
		})
	}
	if _, err := f.netnsOf(filepath.Join(t.TempDir(), "gone")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("netnsOf of a removed cgroup: %v, want fs.ErrNotExist", err)
	}
	if st, ok := startTime(os.Getpid()); !ok || st == 0 {
		t.Errorf("startTime of this process = %d, %v", st, ok)
	}
	if _, ok := startTime(-1); ok {
		t.Error("startTime of no process succeeded")
	}
}

// oneNamespace makes every process k finds (but none of the agent's, 7)
// be in the namespace of cookie c.
func oneNamespace(k *Keeper, c uint64) {
	k.find.self = 7
	k.find.cookieOf = func(int) (uint64, error) { return c, nil }
	k.find.linkOf, k.find.startOf = pidLink, pidOrder
}

// pidOrder stands for the start times of fake processes: in PID order.
func pidOrder(pid int) (uint64, bool) { return uint64(pid), true }
