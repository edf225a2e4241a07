/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Socket destruction: the iterator programs that close connected sockets
 * whose backend left their frontend. Included once, by socklb.c, after the
 * maps they read. */
#ifndef SOCKLB_DESTROY_H
#define SOCKLB_DESTROY_H

/* Socket iterators: close connected sockets whose backend left their
 * service (kernel >= 6.5). An iterator walks the sockets of the network
 * namespace of the process that reads it, so the agent reads it once in
 * each namespace. Only the fields used here are declared; CO-RE relocates
 * them against the running kernel. */
struct seq_file;
struct bpf_iter_meta {
	struct seq_file *seq;
} __attribute__((preserve_access_index));

struct sock_common {
} __attribute__((preserve_access_index));

struct udp_sock {
} __attribute__((preserve_access_index));

struct bpf_iter__udp {
	struct bpf_iter_meta *meta;
	struct udp_sock *udp_sk;
} __attribute__((preserve_access_index));

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
} __attribute__((preserve_access_index));

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

/* destroy_departed closes sk if socklb connected it to a backend that has
 * left its frontend, and writes one byte to the iterator's output so the
 * reader can count. */
static __always_inline void destroy_departed(struct bpf_iter_meta *meta,
					     void *sk, struct sock_common *skc)
{
	struct departure d = {};
	struct sock_state *st;
	char mark = 'x';

	st = bpf_sk_storage_get(&socklb_sock_v3, sk, 0, 0);
	if (!st || !(st->flags & SOCKLB_SOCK_F_CONNECTED))
		return;
	d.rev_nat_id = st->rev_nat_id;
	d.backend_id = st->backend_id;
	if (!bpf_map_lookup_elem(&socklb_gone_v3, &d))
		return;
	if (bpf_sock_destroy(skc) == 0) {
		/* A destroyed UDP socket lives on, disconnected: do not count
		 * or destroy it again on a later pass. */
		st->flags &= ~SOCKLB_SOCK_F_CONNECTED;
		bpf_seq_write(meta->seq, &mark, sizeof(mark));
	}
}

SEC("iter/udp")
int sock_destroy_udp(struct bpf_iter__udp *ctx)
{
	struct udp_sock *udp = ctx->udp_sk;

	if (udp)
		destroy_departed(ctx->meta, udp, (struct sock_common *)udp);
	return 0;
}

SEC("iter/tcp")
int sock_destroy_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct tcp_sock *tp;

	if (!skc)
		return 0;
	/* Request and timewait sockets have no storage. */
	tp = bpf_skc_to_tcp_sock(skc);
	if (tp)
		destroy_departed(ctx->meta, tp, skc);
	return 0;
}

#endif /* SOCKLB_DESTROY_H */
