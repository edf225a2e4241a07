package bypass

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
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
	// cookies is the namespace found for each bypassed pod; a resync
	// looks again (a recreated sandbox has a new one) and keeps it
	// until another is found.
	cookies map[types.UID]uint64
	// dirs are the pod cgroups found; the tree is walked again only for
	// a pod missing from it.
	dirs map[types.UID]string
	// warned: the warnings logged, per pod (each kind once).
	warned map[types.UID]map[string]bool
	// blind: when each pod's processes were first found unreadable.
	blind map[types.UID]time.Time
	// waiting: when each bypassed pod was first found without a network
	// namespace to write (no cgroup, no process in it yet, its
	// namespace's labels not known yet).
	waiting map[types.UID]time.Time
	// refresh: this round looks for every pod's namespace again.
	refresh bool

	unresolved atomic.Int64
	synced     atomic.Bool

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
		written: map[uint64]string{}, cookies: map[types.UID]uint64{}, dirs: map[types.UID]string{},
		warned: map[types.UID]map[string]bool{}, blind: map[types.UID]time.Time{}, waiting: map[types.UID]time.Time{}}, nil
}

// Unresolved counts the pods chosen for bypass (or undecided: their
// namespace's labels not known yet) that have no entry: their sandbox is
// starting, or the agent cannot find or read their network namespace
// (the log says which, for a pod the kubelet reports running). Safe for
// concurrent use.
func (k *Keeper) Unresolved() int { return int(k.unresolved.Load()) }

// Synced is true once the pod and namespace watches have synced: before
// that, nothing is bypassed (beyond what a previous agent wrote). Safe
// for concurrent use.
func (k *Keeper) Synced() bool { return k.synced.Load() }

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

// ErrNotStarted: the pod has no network namespace the agent can find yet
// (its sandbox is not running), or no longer (it finished).
var ErrNotStarted = errors.New("the pod has no running sandbox")

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
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return 0, Decision{}, fmt.Errorf("pod %s/%s is %s: %w", namespace, name, pod.Status.Phase, ErrNotStarted)
	}
	dirs, err := k.find.podDirs()
	if err != nil {
		return 0, Decision{}, err
	}
	dir, ok := dirs[pod.UID]
	if !ok {
		return 0, Decision{}, fmt.Errorf("pod %s/%s (%s): no cgroup of it under %s: %w", namespace, name,
			pod.Status.Phase, k.opts.CgroupRoot, ErrNotStarted)
	}
	c, err := k.find.netnsOf(dir)
	if errors.Is(err, errNoProcess) {
		return 0, Decision{}, fmt.Errorf("pod %s/%s (%s): %w: %w", namespace, name, pod.Status.Phase, err, ErrNotStarted)
	}
	if err != nil {
		return 0, Decision{}, fmt.Errorf("pod %s/%s: %w", namespace, name, err)
	}
	return c, Decide(pod, k.namespaceLabels(namespace), k.opts.Rules), nil
}

// unsyncedWarning is how long the watches may take to sync before the
// agent says that nothing can be bypassed.
const unsyncedWarning = 30 * time.Second

// Run keeps the map until ctx is done. The entries a previous agent
// wrote stay until the informers have synced and say otherwise. A round
// that fails is retried after 1 s, doubling up to 30 s.
func (k *Keeper) Run(ctx context.Context) error {
	have, err := k.opts.Table.Cookies()
	if err != nil {
		return fmt.Errorf("read the bypass map: %w", err)
	}
	for _, c := range have {
		k.written[c] = "(written by a previous agent)"
	}
	k.log.Info("bypass map restored", "entries", len(have))
	start, resync := time.Now(), time.Now()
	failures, saidUnsynced := 0, false
	for {
		var wait time.Duration
		switch {
		case k.opts.Synced():
			k.synced.Store(true)
			k.refresh = time.Since(resync) >= k.opts.Resync
			if k.refresh {
				resync = time.Now()
			}
			next, err := k.round()
			if err != nil {
				failures++
				wait = min(time.Second<<min(failures-1, 5), 30*time.Second)
				k.log.Error("bypass: update failed", "error", err, "retry_in", wait)
			} else {
				failures, wait = 0, next
			}
		default:
			wait = 100 * time.Millisecond
			if !saidUnsynced && time.Since(start) >= unsyncedWarning {
				saidUnsynced = true
				k.log.Warn("bypass: the watches of this node's pods and of the namespaces have not synced: no pod is bypassed "+
					"until they do (may the agent's ClusterRole list and watch pods and namespaces? the client's log says why)",
					"waited", unsyncedWarning)
			}
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
