/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Connect outcomes: the maps and the sock_ops program that count, per
 * backend, the TCP connects socklb rewrote (open, established, failed),
 * report failures to the agent, and the helpers with which a connect
 * reads them (least connections, avoiding a failing backend until the
 * agent has decided on it). Included once, by socklb.c, after the maps
 * it shares. */
#ifndef SOCKLB_OUTCOMES_H
#define SOCKLB_OUTCOMES_H

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct backend_stats);
	/* As many as the backend map; Options resize both together. */
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} socklb_bestat_v3 SEC(".maps");

/* The agent's outlier ejections (struct ejection); as many as the
 * backend map, resized with it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct backend);
	__type(value, struct ejection);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} socklb_eject_v3 SEC(".maps");

/* Backends whose failures in a row reached eject_after and that the
 * agent has not decided on yet: backend id -> bpf_ktime_get_boot_ns() of
 * the failure. The sock_ops program adds an entry with each such failure;
 * the agent deletes it once its decision is in the maps (the backend
 * ejected, or kept for the maximum share). Until then connects to
 * outlier-detecting Services avoid the backend, so that the milliseconds
 * the agent takes cost no failed connects; an entry older than
 * avoid_window_ns (an agent that is not running) no longer counts. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} socklb_avoid_v3 SEC(".maps");

/* Events for the agent: a backend's consecutive failed connects reached
 * eject_after. 2048 events of 32 bytes; when it is full the newest are
 * dropped, and the agent notices them on the next failure. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} socklb_events_v3 SEC(".maps");

/* Consecutive failed connects after which a backend's every further
 * failure is reported (the agent's --outlier-consecutive-failures); the
 * agent sets it before it loads the programs. */
volatile const __u32 eject_after = 3;

/* How long an entry of socklb_avoid_v3 counts: far longer than the agent
 * takes to decide, far shorter than any ejection. */
volatile const __u64 avoid_window_ns = 1000000000ULL;


static __always_inline __s64 lb_open(__u32 backend_id)
{
	struct backend_stats *st = bpf_map_lookup_elem(&socklb_bestat_v3, &backend_id);

	return st ? st->open : 0;
}

/* lb_fewer_open is the power of two choices: given the slot at pick, it
 * reads a second random slot other than pick and returns whichever
 * backend has fewer open connections (the first on a tie), or NULL when
 * the second slot is gone (republished meanwhile). */
static __always_inline struct svc_value *lb_fewer_open(struct svc_key *key,
						       struct svc_value *first,
						       __u16 base, __u16 count,
						       __u16 pick)
{
	struct svc_value *second;
	__u16 other = bpf_get_prandom_u32() % (count - 1);

	if (other >= pick)
		other++;
	key->slot = base + other + 1;
	second = bpf_map_lookup_elem(&socklb_svc_v3, key);
	if (!second)
		return 0;
	if (lb_open(second->backend_id) < lb_open(first->backend_id))
		return second;
	return first;
}

static __always_inline int lb_avoided(__u32 backend_id, __u64 now)
{
	__u64 *since = bpf_map_lookup_elem(&socklb_avoid_v3, &backend_id);

	return since && now - *since < avoid_window_ns;
}

/* lb_avoid returns slot, or, when its backend is avoided (see
 * socklb_avoid_v3), the first of the next slots after pick whose backend
 * is not; when every one probed is avoided, slot itself: an outage must
 * not become a refusal. */
static __always_inline struct svc_value *lb_avoid(struct svc_key *key, struct svc_value *slot,
						  __u16 base, __u16 count, __u16 pick)
{
	__u64 now = bpf_ktime_get_boot_ns();
	int i;

	if (!lb_avoided(slot->backend_id, now))
		return slot;
	for (i = 1; i < SOCKLB_AVOID_PROBES; i++) {
		struct svc_value *next;

		if (i >= count)
			break;
		key->slot = base + (pick + i) % count + 1;
		next = bpf_map_lookup_elem(&socklb_svc_v3, key);
		if (!next)
			break;
		if (!lb_avoided(next->backend_id, now))
			return next;
	}
	return slot;
}


/* Connect outcomes: the sock_ops program follows every TCP socket that
 * connect4/6 rewrote (SOCKLB_SOCK_F_CONNECTED in its storage) from the
 * SYN to TCP_CLOSE, in its backend's struct backend_stats: open
 * connections for least-connections, and failed connects (closed while
 * still in SYN_SENT: refused by RST, timed out, or given up by the
 * client) for outlier ejection, which the agent decides. */
static __always_inline struct backend_stats *stats_of(__u32 backend_id)
{
	struct backend_stats zero = {}, *st;

	st = bpf_map_lookup_elem(&socklb_bestat_v3, &backend_id);
	if (st)
		return st;
	/* A backend's first counted connect; a full map (more backends
	 * than the backend map holds) leaves the socket uncounted. */
	bpf_map_update_elem(&socklb_bestat_v3, &backend_id, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&socklb_bestat_v3, &backend_id);
}

static __always_inline void outcome_connect(struct bpf_sock_ops *skops,
					    struct sock_state *ss)
{
	struct backend_stats *st;

	if (!(ss->flags & SOCKLB_SOCK_F_CONNECTED) ||
	    (ss->flags & SOCKLB_SOCK_F_COUNTED))
		return;
	st = stats_of(ss->backend_id);
	if (!st)
		return;
	/* The state callback reports the socket's way to TCP_CLOSE. */
	if (bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
						     BPF_SOCK_OPS_STATE_CB_FLAG))
		return;
	__sync_fetch_and_add(&st->open, 1);
	ss->flags |= SOCKLB_SOCK_F_COUNTED;
}

static __always_inline void outcome_established(struct sock_state *ss)
{
	struct backend_stats *st;

	if (!(ss->flags & SOCKLB_SOCK_F_COUNTED))
		return;
	ss->flags |= SOCKLB_SOCK_F_ESTABLISHED;
	st = bpf_map_lookup_elem(&socklb_bestat_v3, &ss->backend_id);
	if (!st)
		return;
	__sync_fetch_and_add(&st->established, 1);
	st->consecutive = 0;
}

static __always_inline void outcome_closed(struct sock_state *ss)
{
	struct outcome_event ev = {};
	struct backend_stats *st;
	__u32 n;

	if (!(ss->flags & SOCKLB_SOCK_F_COUNTED))
		return;
	ss->flags &= ~SOCKLB_SOCK_F_COUNTED;
	/* Gone when the backend left and the agent deleted its entry. */
	st = bpf_map_lookup_elem(&socklb_bestat_v3, &ss->backend_id);
	if (!st)
		return;
	__sync_fetch_and_add(&st->open, -1);
	if (ss->flags & SOCKLB_SOCK_F_ESTABLISHED)
		return;
	__sync_fetch_and_add(&st->failed, 1);
	/* Read back rather than use the add's result (that needs -mcpu=v3);
	 * a concurrent failure can only make n larger. */
	__sync_fetch_and_add(&st->consecutive, 1);
	n = st->consecutive;
	ev.time_ns = bpf_ktime_get_boot_ns();
	st->last_failure_ns = ev.time_ns;
	if (n < eject_after)
		return;
	bpf_map_update_elem(&socklb_avoid_v3, &ss->backend_id, &ev.time_ns, BPF_ANY);
	ev.kind = SOCKLB_EV_FAILURES;
	ev.rev_nat_id = ss->rev_nat_id;
	ev.backend_id = ss->backend_id;
	ev.consecutive = n;
	bpf_ringbuf_output(&socklb_events_v3, &ev, sizeof(ev), 0);
}

SEC("sockops")
int sock_outcomes(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	struct sock_state *ss;

	if (!sk)
		return 1;
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == BPF_TCP_CLOSE)
			break;
		return 1;
	default:
		return 1;
	}
	ss = bpf_sk_storage_get(&socklb_sock_v3, sk, 0, 0);
	if (!ss)
		return 1;
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		outcome_connect(skops, ss);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		outcome_established(ss);
		break;
	default:
		outcome_closed(ss);
	}
	return 1;
}

#endif /* SOCKLB_OUTCOMES_H */
