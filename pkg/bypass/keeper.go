package bypass

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Table is the pinned bypass map: network namespace cookies whose sockets
// the programs leave alone.
type Table interface {
	Cookies() ([]uint64, error)
	Put(cookie uint64) error
	Delete(cookie uint64) error
}

// Options configure a Keeper.
type Options struct {
	Rules Rules
	// CgroupRoot is the cgroup2 directory the pods' cgroups are under
	// (the agent's --cgroup-path).
	CgroupRoot string
	// Pods are this node's pods; Namespace the labels of a namespace.
	// Both read informer caches: safe from any goroutine.
	Pods      func() []*corev1.Pod
	Pod       func(namespace, name string) (*corev1.Pod, bool)
	Namespace func(name string) (map[string]string, bool)
	// Synced is true once Pods and Namespace hold full lists.
	Synced func() bool
	Table  Table
	Log    *slog.Logger
	// Poll is how often a bypassed pod whose network namespace is not
	// found yet (its sandbox is starting) is looked for; Resync how often
	// everything is looked at again with no event.
	Poll, Resync time.Duration
}

// Entry is one bypassed pod.
type Entry struct {
	// Pod is namespace/name.
	Pod    string    `json:"pod"`
	UID    types.UID `json:"uid"`
	Cookie uint64    `json:"netnsCookie"`
	Why    string    `json:"why"`
}

// Keeper keeps the bypass map equal to the network namespaces of the
// bypassed pods of this node. It is the map's only writer.
type Keeper struct {
	opts    Options
	log     *slog.Logger
	find    *finder
	trigger chan struct{}

	// Owned by Run's goroutine.
	// written is the map's content: the pod each cookie was written for
	// (none for what a previous agent wrote).
	written map[uint64]string
	cookies map[types.UID]uint64 // cache, dropped at each resync
	// warned: the reasons logged, per pod (each once).
	warned map[types.UID]map[string]bool
	// blind: when each pod's processes were first found unreadable.
	blind map[types.UID]time.Time
	// waiting: when each bypassed pod was first found without a network
	// namespace to write (no cgroup, no process in it yet, its
	// namespace's labels not known yet).
	waiting map[types.UID]time.Time
	// pending counts the pods polled at Poll: those waiting for less
	// than fastWait, and the blind ones for their first second.
	pending int
	// unresolved counts the bypassed pods without an entry.
	unresolved atomic.Int64

	mu      sync.Mutex
	entries []Entry
}

// New returns a Keeper; Run starts it.
func New(opts Options) (*Keeper, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Poll <= 0 {
		opts.Poll = 10 * time.Millisecond
	}
	if opts.Resync <= 0 {
		opts.Resync = 2 * time.Second
	}
	f, err := newFinder(opts.CgroupRoot)
	if err != nil {
		return nil, err
	}
	return &Keeper{opts: opts, log: opts.Log, find: f, trigger: make(chan struct{}, 1),
		written: map[uint64]string{}, cookies: map[types.UID]uint64{}, warned: map[types.UID]map[string]bool{},
		blind: map[types.UID]time.Time{}, waiting: map[types.UID]time.Time{}}, nil
}

// fastWait is how long a pod waiting for its namespace is polled at
// Poll: its sandbox starts within it. Past it, a pod is looked at in
// each round (at least every Resync): a pod may wait for minutes (a
// volume to attach) before its sandbox starts, and one that runs
// without a cgroup the agent can find is a misconfiguration, said once.
const fastWait = 30 * time.Second

// Unresolved counts the pods chosen for bypass that have no entry: their
// sandbox is starting, or the agent cannot find or read their network
// namespace (the log says which). Safe for concurrent use.
func (k *Keeper) Unresolved() int { return int(k.unresolved.Load()) }

// Trigger asks for a look at the pods now; it never blocks.
func (k *Keeper) Trigger() {
	select {
	case k.trigger <- struct{}{}:
	default:
	}
}

// Entries are the pods bypassed now, sorted. Safe for concurrent use.
func (k *Keeper) Entries() []Entry {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.entries)
}

// ErrUnknownPod: no pod of that name on this node.
var ErrUnknownPod = errors.New("no such pod on this node")

// Client finds the network namespace of one of this node's pods and
// says whether it is bypassed (with the reason), for `inspect why
// --client`. Safe for concurrent use.
func (k *Keeper) Client(namespace, name string) (cookie uint64, d Decision, err error) {
	pod, ok := k.opts.Pod(namespace, name)
	if !ok {
		return 0, Decision{}, fmt.Errorf("pod %s/%s: %w", namespace, name, ErrUnknownPod)
	}
	if pod.Spec.HostNetwork {
		return k.find.self, Decide(pod, k.namespaceLabels(namespace), k.opts.Rules), nil
	}
	dirs, err := k.find.podDirs()
	if err != nil {
		return 0, Decision{}, err
	}
	dir, ok := dirs[pod.UID]
	if !ok {
		return 0, Decision{}, fmt.Errorf("pod %s/%s: no cgroup of it under %s (not started yet?)", namespace, name, k.opts.CgroupRoot)
	}
	c, err := k.find.netnsOf(dir)
	if err != nil {
		return 0, Decision{}, fmt.Errorf("pod %s/%s: %w", namespace, name, err)
	}
	return c, Decide(pod, k.namespaceLabels(namespace), k.opts.Rules), nil
}

// Run keeps the map until ctx is done. The entries a previous agent
// wrote stay until the informers have synced and say otherwise.
func (k *Keeper) Run(ctx context.Context) error {
	have, err := k.opts.Table.Cookies()
	if err != nil {
		return fmt.Errorf("read the bypass map: %w", err)
	}
	for _, c := range have {
		k.written[c] = "(written by a previous agent)"
	}
	k.log.Info("bypass map restored", "entries", len(have))
	resync := time.Now()
	for {
		wait := k.opts.Resync
		if k.opts.Synced() {
			full := time.Since(resync) >= k.opts.Resync
			if full {
				clear(k.cookies) // a recreated sandbox has a new namespace
				resync = time.Now()
			}
			if err := k.round(); err != nil {
				k.log.Error("bypass: update failed; retrying", "error", err)
				wait = time.Second
			}
			if k.pending > 0 {
				wait = k.opts.Poll
			}
		} else {
			wait = 100 * time.Millisecond
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-k.trigger:
		case <-t.C:
		}
		t.Stop()
	}
}

// round decides every pod, finds the namespaces of the bypassed ones and
// writes the difference.
func (k *Keeper) round() error {
	pods := k.opts.Pods()
	want := make(map[uint64]Entry)
	var dirs map[types.UID]string
	pending, unresolved := 0, 0
	seen := make(map[types.UID]bool, len(pods))
	for _, pod := range pods {
		if pod == nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		seen[pod.UID] = true
		d := Decide(pod, k.namespaceLabels(pod.Namespace), k.opts.Rules)
		k.note(pod, d)
		if d.NamespaceUnknown {
			unresolved++
			if k.wait(pod, "its namespace's labels are not in the agent's cache") {
				pending++
			}
			continue
		}
		if !d.Bypass {
			delete(k.cookies, pod.UID)
			delete(k.waiting, pod.UID)
			continue
		}
		cookie, ok := k.cookies[pod.UID]
		if !ok {
			if dirs == nil {
				var err error
				if dirs, err = k.find.podDirs(); err != nil {
					return err
				}
			}
			dir, found := dirs[pod.UID]
			if !found {
				unresolved++
				if k.wait(pod, "no cgroup of it under "+k.opts.CgroupRoot+" (is --cgroup-path the kubelet's cgroup root?)") {
					pending++
				}
				continue
			}
			c, err := k.find.netnsOf(dir)
			if errors.Is(err, errNoProcess) {
				unresolved++
				if k.wait(pod, "its cgroup "+dir+" has no process in a network namespace of its own") {
					pending++
				}
				continue
			}
			if errors.Is(err, errCannotSee) {
				// A process in the middle of an exec (the sandbox's pause
				// as the runtime starts it) refuses the open for an
				// instant: polled for a second. Past that, waiting will
				// not help (a privilege is missing): said once per pod,
				// looked at again at each round, not polled.
				first, ok := k.blind[pod.UID]
				if !ok {
					first = time.Now()
					k.blind[pod.UID] = first
				}
				unresolved++
				if time.Since(first) < time.Second {
					pending++
					continue
				}
				k.warn(pod, err.Error())
				continue
			}
			delete(k.blind, pod.UID)
			delete(k.waiting, pod.UID)
			if err != nil {
				return err
			}
			cookie = c
			k.cookies[pod.UID] = c
			if _, done := k.written[c]; !done {
				k.log.Info("pod bypassed: socklb leaves its sockets alone", "pod", pod.Namespace+"/"+pod.Name,
					"why", d.Why, "netns_cookie", c, "since_cgroup_created", sinceCreated(dir))
			}
		}
		want[cookie] = Entry{Pod: pod.Namespace + "/" + pod.Name, UID: pod.UID, Cookie: cookie, Why: d.Why}
	}
	for uid := range k.cookies {
		if !seen[uid] {
			delete(k.cookies, uid)
		}
	}
	for uid := range k.warned {
		if !seen[uid] {
			delete(k.warned, uid)
		}
	}
	for _, m := range []map[types.UID]time.Time{k.blind, k.waiting} {
		for uid := range m {
			if !seen[uid] {
				delete(m, uid)
			}
		}
	}
	k.pending = pending
	k.unresolved.Store(int64(unresolved))
	for c, e := range want {
		if _, done := k.written[c]; !done {
			if err := k.opts.Table.Put(c); err != nil {
				return fmt.Errorf("bypass netns %d (pod %s): %w", c, e.Pod, err)
			}
		}
		k.written[c] = e.Pod
	}
	for c, pod := range k.written {
		if _, ok := want[c]; !ok {
			if err := k.opts.Table.Delete(c); err != nil {
				return fmt.Errorf("stop bypassing netns %d: %w", c, err)
			}
			delete(k.written, c)
			k.log.Info("pod no longer bypassed: socklb balances its connects again", "pod", pod, "netns_cookie", c)
		}
	}
	entries := make([]Entry, 0, len(want))
	for _, e := range want {
		entries = append(entries, e)
	}
	slices.SortFunc(entries, func(a, b Entry) int {
		return cmp.Or(cmp.Compare(a.Pod, b.Pod), cmp.Compare(a.Cookie, b.Cookie))
	})
	k.mu.Lock()
	k.entries = entries
	k.mu.Unlock()
	return nil
}

// namespaceLabels are the labels of a namespace; nil when it is not in
// the cache, and never nil when it is.
func (k *Keeper) namespaceLabels(name string) map[string]string {
	l, ok := k.opts.Namespace(name)
	switch {
	case !ok:
		return nil
	case l == nil:
		return map[string]string{}
	}
	return l
}

// wait notes that pod waits for its network namespace, for why, and
// says whether it is still polled fast. Past fastWait, a pod the kubelet
// says runs is a misconfiguration or a missing privilege: said once.
func (k *Keeper) wait(pod *corev1.Pod, why string) (fast bool) {
	first, ok := k.waiting[pod.UID]
	if !ok {
		first = time.Now()
		k.waiting[pod.UID] = first
	}
	if time.Since(first) < fastWait {
		return true
	}
	if pod.Status.Phase == corev1.PodRunning {
		k.warn(pod, fmt.Sprintf("running, but not bypassed after %s: %s; looked at again every %s", fastWait, why, k.opts.Resync))
	}
	return false
}

// note logs a pod's warning, and a refusal to bypass a hostNetwork pod
// (each once per pod).
func (k *Keeper) note(pod *corev1.Pod, d Decision) {
	msg := d.Warning
	if !d.Bypass && pod.Spec.HostNetwork && d.Why != "" {
		msg = d.Why
	}
	if msg != "" {
		k.warn(pod, msg)
	}
}

// warn logs that pod is not bypassed as asked, once per pod and reason.
func (k *Keeper) warn(pod *corev1.Pod, reason string) {
	if k.warned[pod.UID][reason] {
		return
	}
	if k.warned[pod.UID] == nil {
		k.warned[pod.UID] = map[string]bool{}
	}
	k.warned[pod.UID][reason] = true
	k.log.Warn("pod not bypassed as asked", "pod", pod.Namespace+"/"+pod.Name, "reason", reason)
}

// sinceCreated is how long ago the cgroup dir changed status (its
// creation, for a pod cgroup nobody renames): an upper bound of how long
// the pod ran before it was bypassed.
func sinceCreated(dir string) time.Duration {
	fi, err := os.Stat(dir)
	if err != nil {
		return 0
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0
	}
	return time.Since(time.Unix(st.Ctim.Sec, st.Ctim.Nsec)).Round(time.Microsecond)
}
