/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Bypass: the network namespaces of pods that socklb leaves alone (a label
 * selector or the socklb.io/bypass annotation chose them), so that
 * whatever sits in the pod's namespace (a mesh sidecar's redirect,
 * kube-proxy's rules) sees the ClusterIP. connect and sendmsg check it
 * before anything else; recvmsg, getpeername, the sock_ops program and the
 * socket iterators only act on sockets connect or sendmsg rewrote, which a
 * bypassed socket never is. Included once, by socklb.c. */
#ifndef SOCKLB_BYPASS_H
#define SOCKLB_BYPASS_H

/* netns cookie -> flags (none yet). The agent writes pods' namespaces
 * only, never the node's own. 65 536: far more pods than a node runs. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, __u32);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} socklb_bypass_v3 SEC(".maps");

/* bypassed reports whether the socket's network namespace is bypassed:
 * one hash lookup per connect and send. */
static __always_inline int bypassed(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_netns_cookie(ctx);

	return bpf_map_lookup_elem(&socklb_bypass_v3, &cookie) != 0;
}

#endif /* SOCKLB_BYPASS_H */
