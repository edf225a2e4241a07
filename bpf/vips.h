/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Cluster IPs: a connect or send to a cluster IP at a port and protocol
 * that no frontend has is refused at once, as kube-proxy's nftables mode
 * rejects it, rather than sent to the network untranslated (where nothing
 * answers for a cluster IP, so the client would wait for its timeout).
 * Included once, by socklb.c. */
#ifndef SOCKLB_VIPS_H
#define SOCKLB_VIPS_H

/* The addresses of published ClusterIP frontends, and only those: a
 * NodePort node address, an externalIP or a load-balancer IP is also
 * reached at other ports, which are the node's or the network's to
 * answer. The agent adds an address after its first ClusterIP frontend
 * is published and deletes it before its last one is deleted, so a hit
 * always means a Service's address. Half the service map, as the counter
 * map: every address has a frontend, every frontend a counter entry, so
 * this map is never the one that is full. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct vip_key);
	__type(value, struct vip_value);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} socklb_vip_v3 SEC(".maps");

/* vip_refuse runs when no frontend has key's address, port and protocol.
 * It returns -ECONNREFUSED, counted in the address's entry, when the
 * address is a cluster IP, else 0: the address is not socklb's, and the
 * connect or send goes on untouched. One lookup, on the path of every
 * connect to an address that is not a frontend. */
static __always_inline int vip_refuse(const struct svc_key *key)
{
	/* The first member of svc_key is the whole vip_key. */
	struct vip_value *v = bpf_map_lookup_elem(&socklb_vip_v3, key->addr);

	if (!v)
		return 0;
	/* Atomic rather than per CPU: refusals are rare, and one entry per
	 * address needs no per-CPU allocation when the agent adds it. */
	__sync_fetch_and_add(&v->refused, 1);
	return -ECONNREFUSED;
}

#endif /* SOCKLB_VIPS_H */
