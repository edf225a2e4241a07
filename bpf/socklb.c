// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Socket-level load balancing: cgroup sock_addr hooks rewrite a service
 * address to one of its backends when a socket connects (or sends without
 * connecting), so no packet is ever translated; recvmsg and getpeername show
 * the service address again to the application. A cluster IP at a port no
 * frontend has is refused (vips.h); any other address is left alone. */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/errno.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "socklb.h"

#define SYS_REJECT 0
#define SYS_PROCEED 1

#define NSEC_PER_SEC 1000000000ULL

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
	/* 25 000 Services of 10 endpoints (entries and slots), with room for
	 * the second half that a publish writes next to the live one. */
	__uint(max_entries, 524288);
	/* Replaced elements are freed after an RCU grace period, so a
	 * program never reads an element that is being reused. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} socklb_svc_v3 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct backend);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} socklb_be_v3 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, __u32);
	__type(value, struct svc_counters);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} socklb_cnt_v3 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct svc_name);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} socklb_name_v3 SEC(".maps");

/* One entry per backend of each frontend's live set (struct svc_member):
 * as many as the service map's backend slots. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct svc_member);
	__type(value, __u8);
	__uint(max_entries, 524288);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} socklb_memb_v3 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct affinity_key);
	__type(value, struct affinity_value);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} socklb_aff_v3 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__type(key, int);
	__type(value, struct sock_state);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	/* Pinned like the rest: sockets opened before an agent restart keep
	 * their state for the new programs. */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} socklb_sock_v3 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct departure);
	__type(value, __u8);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} socklb_gone_v3 SEC(".maps");

#include "outcomes.h"
#include "vips.h"
#include "bypass.h"

static __always_inline void lb_count(__u32 rev_nat_id, int refused)
{
	struct svc_counters *c = bpf_map_lookup_elem(&socklb_cnt_v3, &rev_nat_id);

	/* The agent creates the entry when it publishes the service. */
	if (!c)
		return;
	if (refused)
		__sync_fetch_and_add(&c->refused, 1);
	else
		__sync_fetch_and_add(&c->connects, 1);
}

/* lb_affinity returns the backend this client used last for the service,
 * with its id in *id, if it is recent enough and still exists, else NULL. */
static __always_inline struct backend *lb_affinity(struct affinity_key *ak,
						   __u32 timeout, __u64 now,
						   __u32 *id)
{
	struct affinity_value *av = bpf_map_lookup_elem(&socklb_aff_v3, ak);

	if (!av)
		return 0;
	if (now - av->last_used_ns > (__u64)timeout * NSEC_PER_SEC)
		return 0;
	*id = av->backend_id;
	/* The agent drops entries of backends that leave the service; a
	 * backend gone from the map is not usable either way. Affinity
	 * remembers an id, not a slot, so this is the one path of a connect
	 * that reads the backend map. */
	return bpf_map_lookup_elem(&socklb_be_v3, id);
}

/* lb_select picks a backend for key (slot 0) into *out and its id into
 * *out_id. It returns 0 on success, -ENOENT when no frontend has the
 * address, port and protocol (see vip_refuse), -ECONNREFUSED when the
 * service has no backend. A slot that is gone by the time it is read means
 * the agent republished the service between the two lookups; the entry is
 * read again, up to SOCKLB_LOOKUP_ATTEMPTS times. Losing that race every
 * time (the agent republishing the same service over and over, faster than
 * a connect runs) also refuses, and is counted as refused: there was no
 * backend to pick. Without affinity a connect reads two elements of the
 * service map (the entry and a slot, which carries the backend) and the
 * counters. */
static __always_inline int lb_select(struct svc_key *key, __u64 client,
				     struct backend *out, __u32 *out_id,
				     __u32 *out_rev_nat)
{
	__u32 rev_nat_id = 0;
	int i;

	for (i = 0; i < SOCKLB_LOOKUP_ATTEMPTS; i++) {
		struct affinity_key ak = {};
		struct affinity_value av = {};
		struct svc_value *entry, *slot;
		struct backend *be = 0;
		__u32 backend_id = 0, timeout;
		__u16 count, base, flags;
		__u64 now = 0;

		key->slot = 0;
		entry = bpf_map_lookup_elem(&socklb_svc_v3, key);
		if (!entry)
			return -ENOENT;
		count = entry->count;
		base = entry->base;
		flags = entry->flags;
		timeout = entry->affinity_timeout;
		rev_nat_id = entry->rev_nat_id;
		if (count == 0)
			break;

		if (flags & SOCKLB_SVC_F_AFFINITY) {
			ak.netns_cookie = client;
			ak.rev_nat_id = rev_nat_id;
			now = bpf_ktime_get_boot_ns();
			be = lb_affinity(&ak, timeout, now, &backend_id);
		}
		if (!be) {
			__u16 pick = bpf_get_prandom_u32() % count;

			key->slot = base + pick + 1;
			slot = bpf_map_lookup_elem(&socklb_svc_v3, key);
			if (!slot)
				continue; /* republished meanwhile: reread */
			if ((flags & SOCKLB_SVC_F_LEASTCONN) && count > 1) {
				slot = lb_fewer_open(key, slot, base, count, pick);
				if (!slot)
					continue;
			}
			if ((flags & SOCKLB_SVC_F_OUTLIER) && count > 1)
				slot = lb_avoid(key, slot, base, count, pick);
			backend_id = slot->backend_id;
			be = &slot->backend;
		}
		*out = *be;
		*out_id = backend_id;
		*out_rev_nat = rev_nat_id;
		if (flags & SOCKLB_SVC_F_AFFINITY) {
			av.backend_id = backend_id;
			av.last_used_ns = now;
			bpf_map_update_elem(&socklb_aff_v3, &ak, &av, BPF_ANY);
		}
		lb_count(rev_nat_id, 0);
		return 0;
	}
	lb_count(rev_nat_id, 1);
	return -ECONNREFUSED;
}

static __always_inline int proto_ok(struct bpf_sock_addr *ctx)
{
	return ctx->protocol == IPPROTO_TCP || ctx->protocol == IPPROTO_UDP;
}

static __always_inline void addr_from_v4(__be32 *a, __be32 v4)
{
	a[0] = 0;
	a[1] = 0;
	a[2] = bpf_htonl(0xffff);
	a[3] = v4;
}

static __always_inline int addr_is_v4(const __be32 *a)
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0xffff);
}

/* sock_remember writes what was rewritten into the socket's storage. */
static __always_inline void sock_remember(struct bpf_sock_addr *ctx,
					  const struct svc_key *key,
					  const struct backend *be, __u32 id,
					  __u32 rev_nat_id, __u32 flags)
{
	struct sock_state *st;

	st = bpf_sk_storage_get(&socklb_sock_v3, ctx->sk, 0,
				BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		return;
	__builtin_memcpy(st->vip, key->addr, sizeof(st->vip));
	__builtin_memcpy(st->backend_addr, be->addr, sizeof(st->backend_addr));
	st->vip_port = key->port;
	st->backend_port = be->port;
	st->rev_nat_id = rev_nat_id;
	st->backend_id = id;
	st->flags = flags;
}

/* sock_sticky returns 0 with the backend in *be when the unconnected
 * socket was last sent from this very frontend to a backend that is still
 * in the frontend's live set: same address and port in the socket state,
 * same rev_nat_id as the live entry (a frontend deleted and created again
 * gets a new one), backends to pick from, and a member entry for the pair.
 * It returns -ENOENT when no frontend has the address, port and protocol
 * (vip_refuse then decides; a deleted Service's address is left alone,
 * also for a socket that used it), and
 * -EAGAIN when a backend has to be picked. A backend id alone is not
 * enough: frontends with the same backend share its id. */
static __always_inline int sock_sticky(struct bpf_sock_addr *ctx,
				       struct svc_key *key, struct backend *be)
{
	struct svc_member m = {};
	struct sock_state *st;
	struct svc_value *entry;
	struct backend *b;
	__u32 rev_nat_id;

	key->slot = 0;
	entry = bpf_map_lookup_elem(&socklb_svc_v3, key);
	if (!entry)
		return -ENOENT;
	rev_nat_id = entry->rev_nat_id;
	if (entry->count == 0)
		return -EAGAIN; /* lb_select refuses and counts it */
	st = bpf_sk_storage_get(&socklb_sock_v3, ctx->sk, 0, 0);
	if (!st || st->rev_nat_id != rev_nat_id || st->vip_port != key->port ||
	    st->vip[0] != key->addr[0] || st->vip[1] != key->addr[1] ||
	    st->vip[2] != key->addr[2] || st->vip[3] != key->addr[3])
		return -EAGAIN;
	m.rev_nat_id = rev_nat_id;
	m.backend_id = st->backend_id;
	if (!bpf_map_lookup_elem(&socklb_memb_v3, &m))
		return -EAGAIN;
	b = bpf_map_lookup_elem(&socklb_be_v3, &m.backend_id);
	if (!b)
		return -EAGAIN;
	*be = *b;
	lb_count(rev_nat_id, 0);
	return 0;
}

/* sock_xlate looks key up and picks a backend; for an unconnected UDP
 * socket (sticky) it keeps the backend it picked before while that backend
 * is in the same frontend's live set (sock_sticky). */
static __always_inline int sock_xlate(struct bpf_sock_addr *ctx,
				      struct svc_key *key, struct backend *be,
				      int sticky)
{
	__u32 id = 0, rev_nat_id = 0;
	int ret;

	if (sticky) {
		ret = sock_sticky(ctx, key, be);
		if (ret != -EAGAIN)
			return ret;
	}
	ret = lb_select(key, bpf_get_netns_cookie(ctx), be, &id, &rev_nat_id);
	if (ret < 0)
		return ret;
	sock_remember(ctx, key, be, id, rev_nat_id,
		      sticky ? 0 : SOCKLB_SOCK_F_CONNECTED);
	return 0;
}

static __always_inline int sock4_xlate(struct bpf_sock_addr *ctx, int sticky)
{
	struct svc_key key = {};
	struct backend be;
	int ret;

	if (!proto_ok(ctx) || bypassed(ctx))
		return 0;
	addr_from_v4(key.addr, ctx->user_ip4);
	key.port = (__be16)ctx->user_port;
	key.proto = ctx->protocol;

	ret = sock_xlate(ctx, &key, &be, sticky);
	if (ret == -ENOENT)
		return vip_refuse(&key);
	if (ret < 0)
		return ret;
	/* An IPv4 frontend only has IPv4 backends (pkg/lb makes sure). */
	if (!addr_is_v4(be.addr))
		return -EAFNOSUPPORT;
	ctx->user_ip4 = be.addr[3];
	ctx->user_port = be.port;
	return 0;
}

static __always_inline int sock6_xlate(struct bpf_sock_addr *ctx, int sticky)
{
	struct svc_key key = {};
	struct backend be;
	__be32 a0, a1, a2, a3;
	int ret;

	if (!proto_ok(ctx) || bypassed(ctx))
		return 0;
	/* Copy the context fields into locals first: clang otherwise emits
	 * accesses the verifier rejects (modified ctx pointer). */
	a0 = ctx->user_ip6[0];
	a1 = ctx->user_ip6[1];
	a2 = ctx->user_ip6[2];
	a3 = ctx->user_ip6[3];
	key.addr[0] = a0;
	key.addr[1] = a1;
	key.addr[2] = a2;
	key.addr[3] = a3;
	key.port = (__be16)ctx->user_port;
	key.proto = ctx->protocol;

	ret = sock_xlate(ctx, &key, &be, sticky);
	if (ret == -ENOENT)
		return vip_refuse(&key);
	if (ret < 0)
		return ret;
	/* A mapped IPv4 service has mapped IPv4 backends, which an AF_INET6
	 * socket reaches by the same mapped form. */
	a0 = be.addr[0];
	a1 = be.addr[1];
	a2 = be.addr[2];
	a3 = be.addr[3];
	ctx->user_ip6[0] = a0;
	ctx->user_ip6[1] = a1;
	ctx->user_ip6[2] = a2;
	ctx->user_ip6[3] = a3;
	ctx->user_port = be.port;
	return 0;
}

/* reply_state returns the socket's state if addr:port is the backend this
 * socket was sent to, else NULL, so that only that backend's replies are
 * shown as the service's. */
static __always_inline struct sock_state *reply_state(struct bpf_sock_addr *ctx,
						      const __be32 *addr,
						      __be16 port)
{
	struct sock_state *st = bpf_sk_storage_get(&socklb_sock_v3, ctx->sk, 0, 0);

	if (!st || st->backend_port != port)
		return 0;
	if (st->backend_addr[0] != addr[0] || st->backend_addr[1] != addr[1] ||
	    st->backend_addr[2] != addr[2] || st->backend_addr[3] != addr[3])
		return 0;
	return st;
}

static __always_inline void sock4_reverse(struct bpf_sock_addr *ctx)
{
	struct sock_state *st;
	__be32 addr[4];

	addr_from_v4(addr, ctx->user_ip4);
	st = reply_state(ctx, addr, (__be16)ctx->user_port);
	if (!st || !addr_is_v4(st->vip))
		return;
	ctx->user_ip4 = st->vip[3];
	ctx->user_port = st->vip_port;
}

static __always_inline void sock6_reverse(struct bpf_sock_addr *ctx)
{
	struct sock_state *st;
	__be32 addr[4];
	__be32 v0, v1, v2, v3;

	addr[0] = ctx->user_ip6[0];
	addr[1] = ctx->user_ip6[1];
	addr[2] = ctx->user_ip6[2];
	addr[3] = ctx->user_ip6[3];
	st = reply_state(ctx, addr, (__be16)ctx->user_port);
	if (!st)
		return;
	v0 = st->vip[0];
	v1 = st->vip[1];
	v2 = st->vip[2];
	v3 = st->vip[3];
	ctx->user_ip6[0] = v0;
	ctx->user_ip6[1] = v1;
	ctx->user_ip6[2] = v2;
	ctx->user_ip6[3] = v3;
	ctx->user_port = st->vip_port;
}

/* Workers return -errno; the hooks turn that into the caller's errno. Like
 * kube-proxy's ICMP reject, a service without backends is ECONNREFUSED at
 * once, not EPERM and not a hang. */
static __always_inline int verdict(int ret)
{
	if (ret < 0) {
		bpf_set_retval(ret);
		return SYS_REJECT;
	}
	return SYS_PROCEED;
}

SEC("cgroup/connect4")
int sock4_connect(struct bpf_sock_addr *ctx)
{
	return verdict(sock4_xlate(ctx, 0));
}

SEC("cgroup/connect6")
int sock6_connect(struct bpf_sock_addr *ctx)
{
	return verdict(sock6_xlate(ctx, 0));
}

SEC("cgroup/sendmsg4")
int sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return verdict(sock4_xlate(ctx, 1));
}

SEC("cgroup/sendmsg6")
int sock6_sendmsg(struct bpf_sock_addr *ctx)
{
	return verdict(sock6_xlate(ctx, 1));
}

SEC("cgroup/recvmsg4")
int sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	sock4_reverse(ctx);
	return SYS_PROCEED;
}

SEC("cgroup/recvmsg6")
int sock6_recvmsg(struct bpf_sock_addr *ctx)
{
	sock6_reverse(ctx);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername4")
int sock4_getpeername(struct bpf_sock_addr *ctx)
{
	sock4_reverse(ctx);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername6")
int sock6_getpeername(struct bpf_sock_addr *ctx)
{
	sock6_reverse(ctx);
	return SYS_PROCEED;
}

#include "destroy.h"

/* Never called, so never loaded: its signature puts the enums that pkg/maps
 * shares into the object's BTF, where bpf2go (-type) finds them. An enum
 * that no map, global or function uses is left out of BTF. */
__attribute__((noinline)) int socklb_btf_enums(enum socklb_consts c,
					       enum socklb_svc_flags f,
					       enum socklb_sock_flags s,
					       enum socklb_event_kind e,
					       struct outcome_event *ev)
{
	return c + f + s + e + (ev ? 1 : 0);
}

char _license[] SEC("license") = "Dual BSD/GPL";
