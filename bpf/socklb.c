// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Socket-level load balancing: cgroup sock_addr hooks rewrite a service
 * address to one of its backends when a socket connects, so no packet of the
 * connection is ever translated. */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/errno.h>
#include <bpf/bpf_helpers.h>

#include "socklb.h"

#define SYS_REJECT 0
#define SYS_PROCEED 1

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
	__uint(max_entries, 262144);
	/* Replaced elements are freed after an RCU grace period, so a
	 * program never reads an element that is being reused. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} socklb_svc_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct backend);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} socklb_be_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, __u32);
	__type(value, struct svc_counters);
	__uint(max_entries, 131072);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} socklb_cnt_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct svc_name);
	__uint(max_entries, 131072);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} socklb_name_v1 SEC(".maps");

static __always_inline void lb_count(__u32 rev_nat_id, int refused)
{
	struct svc_counters *c = bpf_map_lookup_elem(&socklb_cnt_v1, &rev_nat_id);

	/* The agent creates the entry when it publishes the service. */
	if (!c)
		return;
	if (refused)
		__sync_fetch_and_add(&c->refused, 1);
	else
		__sync_fetch_and_add(&c->connects, 1);
}

/* lb4_select picks a backend for key (slot 0) into *out. It returns 0 on
 * success, -ENOENT when the address is not a service, -ECONNREFUSED when
 * the service has no backend. */
static __always_inline int lb4_select(struct svc_key *key, struct backend *out)
{
	__u32 rev_nat_id = 0;
	int i;

	for (i = 0; i < SOCKLB_LOOKUP_ATTEMPTS; i++) {
		struct svc_value *entry, *slot;
		struct backend *be;
		__u32 backend_id;
		__u16 count, base;

		key->slot = 0;
		entry = bpf_map_lookup_elem(&socklb_svc_v1, key);
		if (!entry)
			return -ENOENT;
		count = entry->count;
		base = entry->base;
		rev_nat_id = entry->rev_nat_id;
		if (count == 0)
			break;

		key->slot = base + (bpf_get_prandom_u32() % count) + 1;
		slot = bpf_map_lookup_elem(&socklb_svc_v1, key);
		if (!slot)
			continue; /* republished meanwhile: read the entry again */
		backend_id = slot->backend_id;
		be = bpf_map_lookup_elem(&socklb_be_v1, &backend_id);
		if (!be)
			continue;
		*out = *be;
		lb_count(rev_nat_id, 0);
		return 0;
	}
	lb_count(rev_nat_id, 1);
	return -ECONNREFUSED;
}

static __always_inline int sock4_xlate(struct bpf_sock_addr *ctx)
{
	struct svc_key key = {};
	struct backend be;
	int ret;

	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return 0;
	key.vip = ctx->user_ip4;
	key.port = (__be16)ctx->user_port;
	key.proto = ctx->protocol;

	ret = lb4_select(&key, &be);
	if (ret == -ENOENT)
		return 0;
	if (ret < 0)
		return ret;
	ctx->user_ip4 = be.addr;
	ctx->user_port = be.port;
	return 0;
}

SEC("cgroup/connect4")
int sock4_connect(struct bpf_sock_addr *ctx)
{
	int ret = sock4_xlate(ctx);

	if (ret < 0) {
		/* Like kube-proxy's ICMP reject: the caller sees
		 * ECONNREFUSED at once, not EPERM and not a hang. */
		bpf_set_retval(ret);
		return SYS_REJECT;
	}
	return SYS_PROCEED;
}

char _license[] SEC("license") = "Dual BSD/GPL";
