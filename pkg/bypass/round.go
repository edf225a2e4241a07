package bypass

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// fastWait is how long a pod waiting for its namespace is polled at
// Poll: its sandbox usually starts within it. Past it, a pod whose
// cgroup exists and that the kubelet does not report running yet is
// polled at slowPoll (it may wait minutes for a volume, then start its
// sandbox at any moment, with no Pod event before its containers run);
// any other is looked at in each round only (at least every Resync), and
// one the kubelet reports running is a misconfiguration or a missing
// privilege: said once.
const (
	fastWait = 30 * time.Second
	slowPoll = 100 * time.Millisecond
)

// blindFor is how long a pod whose processes refuse the open is polled:
// a process in the middle of an exec (the sandbox's pause as the runtime
// starts it) refuses it for an instant. Past it, waiting will not help.
const blindFor = time.Second

// The kinds of warnings, each logged once per pod.
const (
	warnAnnotation  = "annotation"
	warnHostNetwork = "hostNetwork"
	warnCannotSee   = "cannot see"
	warnUnresolved  = "running, unresolved"
)

// round decides every pod, finds the namespaces of the bypassed ones and
// writes the difference. It returns when the next round is wanted; after
// an error, the counters and the entries are as far as it got.
func (k *Keeper) round() (time.Duration, error) {
	pods := k.opts.Pods()
	want := make(map[uint64]Entry)
	next := k.opts.Resync
	walked := false
	unresolved := 0
	seen := make(map[types.UID]bool, len(pods))
	defer func() { k.unresolved.Store(int64(unresolved)) }()
	for _, pod := range pods {
		if pod == nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		seen[pod.UID] = true
		d := Decide(pod, k.namespaceLabels(pod.Namespace), k.opts.Rules)
		k.note(pod, d)
		if !d.Bypass && !d.NamespaceUnknown {
			delete(k.cookies, pod.UID)
			delete(k.waiting, pod.UID)
			continue
		}
		old, had := k.cookies[pod.UID]
		entry := func(c uint64) {
			want[c] = Entry{Pod: pod.Namespace + "/" + pod.Name, UID: pod.UID, Cookie: c, Why: d.Why}
		}
		if d.NamespaceUnknown {
			// Undecided: a bypassed pod stays so until its namespace's
			// labels say otherwise.
			if had {
				entry(old)
				continue
			}
			unresolved++
			next = min(next, k.wait(pod, false, "its namespace's labels are not in the agent's cache"))
			continue
		}
		if had && !k.refresh {
			entry(old)
			continue
		}
		dir, found := k.dirs[pod.UID]
		if !found && !walked {
			dirs, err := k.find.podDirs()
			if err != nil {
				return time.Second, err
			}
			k.dirs, walked = dirs, true
			dir, found = k.dirs[pod.UID]
		}
		if !found {
			if had {
				entry(old) // its cgroup went: the pod is going
				continue
			}
			unresolved++
			next = min(next, k.wait(pod, false, "no cgroup of it under "+k.opts.CgroupRoot+
				" (is --cgroup-path the kubelet's cgroup root?)"))
			continue
		}
		c, err := k.find.netnsOf(dir)
		switch {
		case err == nil:
		case errors.Is(err, fs.ErrNotExist):
			delete(k.dirs, pod.UID) // removed meanwhile: walked again next round
			next = min(next, k.opts.Poll)
			if had {
				entry(old)
			} else {
				unresolved++
			}
			continue
		case errors.Is(err, errNoProcess):
			if had {
				entry(old)
				continue
			}
			unresolved++
			next = min(next, k.wait(pod, true, "its cgroup "+dir+" has no process in a network namespace of its own"))
			continue
		case errors.Is(err, errCannotSee):
			if had {
				entry(old)
				continue
			}
			unresolved++
			first, ok := k.blind[pod.UID]
			if !ok {
				first = time.Now()
				k.blind[pod.UID] = first
			}
			if time.Since(first) < blindFor {
				next = min(next, k.opts.Poll)
				continue
			}
			k.warn(pod, warnCannotSee, err.Error())
			continue
		default:
			return time.Second, err
		}
		delete(k.blind, pod.UID)
		delete(k.waiting, pod.UID)
		k.cookies[pod.UID] = c
		if _, done := k.written[c]; !done {
			k.log.Info("pod bypassed: socklb leaves its sockets alone", "pod", pod.Namespace+"/"+pod.Name,
				"why", d.Why, "netns_cookie", c, "since_cgroup_created", sinceCreated(dir))
		}
		entry(c)
	}
	k.forget(seen)
	return next, k.write(want)
}

// forget drops what is kept for pods that are gone.
func (k *Keeper) forget(seen map[types.UID]bool) {
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
}

// write makes the map hold want: the deletes first (they make room),
// then the adds, each tried even when another failed.
func (k *Keeper) write(want map[uint64]Entry) error {
	var errs []error
	for c, pod := range k.written {
		if _, ok := want[c]; ok {
			continue
		}
		if err := k.opts.Table.Delete(c); err != nil {
			errs = append(errs, fmt.Errorf("stop bypassing netns %d (pod %s): %w", c, pod, err))
			continue
		}
		delete(k.written, c)
		k.log.Info("pod no longer bypassed: socklb balances its connects again", "pod", pod, "netns_cookie", c)
	}
	entries := make([]Entry, 0, len(want))
	for c, e := range want {
		if _, done := k.written[c]; !done {
			if err := k.opts.Table.Put(c); err != nil {
				errs = append(errs, fmt.Errorf("bypass netns %d (pod %s): %w", c, e.Pod, err))
				continue
			}
		}
		k.written[c] = e.Pod
		entries = append(entries, e)
	}
	slices.SortFunc(entries, func(a, b Entry) int {
		return cmp.Or(cmp.Compare(a.Pod, b.Pod), cmp.Compare(a.Cookie, b.Cookie))
	})
	k.mu.Lock()
	k.entries = entries
	k.mu.Unlock()
	return errors.Join(errs...)
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
// returns how soon to look again (see fastWait). inCgroup: its cgroup
// exists.
func (k *Keeper) wait(pod *corev1.Pod, inCgroup bool, why string) time.Duration {
	first, ok := k.waiting[pod.UID]
	if !ok {
		first = time.Now()
		k.waiting[pod.UID] = first
	}
	switch {
	case time.Since(first) < fastWait:
		return k.opts.Poll
	case pod.Status.Phase == corev1.PodRunning:
		k.warn(pod, warnUnresolved, fmt.Sprintf("running, but not bypassed after %s: %s", fastWait, why))
	case inCgroup:
		return slowPoll
	}
	return k.opts.Resync
}

// note logs a pod's warning, and a refusal to bypass a hostNetwork pod
// (each once per pod).
func (k *Keeper) note(pod *corev1.Pod, d Decision) {
	switch {
	case d.Warning != "":
		k.warn(pod, warnAnnotation, d.Warning)
	case !d.Bypass && pod.Spec.HostNetwork && d.Why != "":
		k.warn(pod, warnHostNetwork, d.Why)
	}
}

// warn logs that pod is not bypassed as asked, once per pod and kind of
// warning.
func (k *Keeper) warn(pod *corev1.Pod, kind, reason string) {
	if k.warned[pod.UID][kind] {
		return
	}
	if k.warned[pod.UID] == nil {
		k.warned[pod.UID] = map[string]bool{}
	}
	k.warned[pod.UID][kind] = true
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
