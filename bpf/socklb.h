/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Map contract between the BPF programs and pkg/maps. Go types are generated
 * from these structs by bpf2go (-type), so change them only together with a
 * map name version bump (the _v3 suffix on every map). */
#ifndef SOCKLB_H
#define SOCKLB_H

#include <linux/types.h>

/* Constants shared with pkg/maps. An enum rather than #defines: bpf2go
 * (-type socklb_consts) turns it into Go constants, so the two sides cannot
 * drift. socklb.c puts the type into the object's BTF. */
enum socklb_consts {
	/* Slots of one service are split in two halves so that a new backend
	 * set can be written next to the live one and published by replacing
	 * slot 0 alone. */
	SOCKLB_SLOT_HALF = 0x8000,
	SOCKLB_MAX_BACKENDS_PER_SVC = SOCKLB_SLOT_HALF - 1,
	/* Attempts to read a consistent {entry, slot} pair while the agent
	 * is republishing the service under our feet. */
	SOCKLB_LOOKUP_ATTEMPTS = 3,
	/* Slots a connect reads to find a backend that is not avoided
	 * (socklb_avoid_v3) before it takes the one it picked. */
	SOCKLB_AVOID_PROBES = 4,
	/* Bytes of a frontend name, with its terminating NUL. */
	SOCKLB_NAME_LEN = 128,
};

enum socklb_svc_flags {
	SOCKLB_SVC_F_AFFINITY = 1 << 0, /* sessionAffinity: ClientIP */
	SOCKLB_SVC_F_LOCAL = 1 << 1,    /* only node-local endpoints */
	SOCKLB_SVC_F_NODEPORT = 1 << 2, /* a NodePort frontend */
	SOCKLB_SVC_F_EXTERNAL = 1 << 3, /* an externalIP or LB ingress IP */
	/* Least connections: of two random backends, the one with fewer
	 * open connections from this node (struct backend_stats). */
	SOCKLB_SVC_F_LEASTCONN = 1 << 4,
	/* Outlier detection: a connect avoids a backend that has just
	 * reached eject_after failures in a row and that the agent has not
	 * decided on yet (socklb_avoid_v3). */
	SOCKLB_SVC_F_OUTLIER = 1 << 5,
};

/* Addresses are always 16 bytes in network order: IPv6 as is, IPv4 as an
 * IPv4-mapped address (::ffff:a.b.c.d). One key format serves both
 * families, and an AF_INET6 socket connecting to a mapped address finds the
 * IPv4 service without a second lookup. */

/* Key of the service map. slot 0 holds the service entry, slots
 * base+1..base+count hold its backends (id and copy). */
struct svc_key {
	__be32 addr[4]; /* service address */
	__be16 port;    /* service port, network order */
	__u8 proto;     /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 scope;     /* reserved for traffic-policy scopes; 0 today */
	__u16 slot;     /* 0 = service entry, >0 = backend slot */
	__u8 pad[2];
};

/* Value of the backend map, keyed by a __u32 backend id. */
struct backend {
	__be32 addr[4];
	__be16 port; /* network order */
	__u8 proto;
	__u8 pad;
};

/* Value of the service map; which fields are meaningful depends on the slot.
 * A backend slot carries a copy of its backend next to the id, so that a
 * connect reads the backend from the slot instead of looking the id up in
 * the backend map: with many Services every lookup misses the CPU caches.
 * The agent never changes the backend of a live id (a new address gets a
 * new id), so the copy cannot go stale. The id stays for session affinity
 * and the socket state, which refer to backends by id. */
struct svc_value {
	__u32 backend_id;       /* backend slots: id in the backend map */
	__u16 count;            /* slot 0: number of backends, 0 = refuse */
	__u16 base;             /* slot 0: 0 or SOCKLB_SLOT_HALF, the live half */
	__u32 rev_nat_id;       /* slot 0: frontend id, keys counters/affinity */
	__u16 flags;            /* slot 0: enum socklb_svc_flags */
	__u8 pad[2];
	__u32 affinity_timeout; /* slot 0: seconds, with SOCKLB_SVC_F_AFFINITY */
	struct backend backend; /* backend slots: the backend of backend_id */
};

/* Per-CPU counters of one frontend, keyed by its rev_nat_id. */
struct svc_counters {
	/* connects and sends rewritten to a backend, including the sends
	 * of an unconnected UDP socket that keeps its backend */
	__u64 connects;
	/* connects and sends refused: the frontend has no backend (count 0),
	 * or, rarely, SOCKLB_LOOKUP_ATTEMPTS lookups in a row found the
	 * slot they picked already gone because the agent republished the
	 * frontend each time in between */
	__u64 refused;
};

/* Name of a frontend ("namespace/name:port"), keyed by its rev_nat_id. The
 * programs never read it; it is there so that `agent inspect` and bpftool can
 * say which Service an entry belongs to without asking the agent. */
struct svc_name {
	char name[SOCKLB_NAME_LEN];
};

/* What socklb did to one socket, in its socket-local storage: written when
 * connect or sendmsg rewrites, read by recvmsg and getpeername to show the
 * service address again. It lives and dies with the socket. */
enum socklb_sock_flags {
	/* Rewritten by connect: the socket is bound to its backend, and is
	 * destroyed when that backend leaves the service. */
	SOCKLB_SOCK_F_CONNECTED = 1 << 0,
	/* A TCP connect the sock_ops program counts in its backend's
	 * open connections, until the socket reaches TCP_CLOSE. */
	SOCKLB_SOCK_F_COUNTED = 1 << 1,
	/* That connect reached ESTABLISHED: its close is not a failure. */
	SOCKLB_SOCK_F_ESTABLISHED = 1 << 2,
};

struct sock_state {
	__be32 vip[4];
	__be32 backend_addr[4];
	__be16 vip_port;
	__be16 backend_port;
	__u32 rev_nat_id;
	__u32 backend_id;
	__u32 flags; /* enum socklb_sock_flags */
};

/* Key of the membership map: the backend is in the frontend's live set.
 * An unconnected UDP socket keeps the backend it was sent to only while
 * its frontend still lists it; the backend id alone is not enough, since
 * frontends with the same backend share its id. The agent writes a
 * frontend's new members before it publishes the set and deletes the
 * members that left after the old slots are gone. */
struct svc_member {
	__u32 rev_nat_id;
	__u32 backend_id;
};

/* Key of the map of backends that left a frontend: connected sockets with
 * this pair in their storage are destroyed by the socket iterators. */
struct departure {
	__u32 rev_nat_id;
	__u32 backend_id;
};

/* Key of the cluster IP map: a cluster IP, as svc_key.addr holds it. */
struct vip_key {
	__be32 addr[4];
};

/* Value of the cluster IP map. */
struct vip_value {
	/* connects and sends to this address at a port and protocol that
	 * no frontend has, refused with ECONNREFUSED */
	__u64 refused;
};

/* Session affinity (ClientIP): the client is the network namespace of the
 * socket, which is a pod (the source address is not known at connect). */
struct affinity_key {
	__u64 netns_cookie;
	__u32 rev_nat_id;
	__u32 pad;
};

struct affinity_value {
	__u32 backend_id;
	__u32 pad;
	__u64 last_used_ns; /* bpf_ktime_get_boot_ns() */
};

/* Connect outcomes of one backend from this node, keyed by its backend
 * id, written by the sock_ops program for TCP sockets socklb rewrote. The
 * program creates an entry at a backend's first counted connect; the
 * agent deletes it with the backend. */
struct backend_stats {
	__s64 open;        /* counted connects not yet closed, SYN_SENT included */
	__u64 established; /* connects that reached ESTABLISHED */
	__u64 failed;      /* connects closed in SYN_SENT: RST, timeout, given up */
	__u32 consecutive; /* failed connects since the last established one */
	__u32 pad;
	__u64 last_failure_ns; /* bpf_ktime_get_boot_ns() */
};

/* An outlier ejection the agent decided, keyed by struct backend. No
 * program reads it: the agent keeps its decisions here so that a
 * restarted agent goes on where the last one stopped, and bpftool shows
 * them. Times are the agent's (Unix nanoseconds). */
struct ejection {
	__u64 at_ns;    /* when the current or last ejection began */
	__u64 until_ns; /* when it ends */
	__u32 ejections; /* the multiplier: ejections since last forgotten */
	__u32 pad;
};

enum socklb_event_kind {
	/* A connect failed and the backend's consecutive failures reached
	 * the threshold (the eject_after constant). */
	SOCKLB_EV_FAILURES = 1,
};

/* An event of the ring buffer the agent reads. */
struct outcome_event {
	__u32 kind; /* enum socklb_event_kind */
	__u32 rev_nat_id;
	__u32 backend_id;
	__u32 consecutive;
	__u64 time_ns; /* bpf_ktime_get_boot_ns() */
};

#endif /* SOCKLB_H */
