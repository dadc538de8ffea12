/* popshift forwarder: compile-time sizes and the numbers both C and Python use.
 *
 * Every limit can be overridden with -DNAME=value; Python reads the values it needs
 * from services/forwarder/layout.py, and tests/forwarder/test_layout.py proves that the
 * two agree by compiling this header on the host.
 */
#ifndef POPSHIFT_CONSTS_H
#define POPSHIFT_CONSTS_H

/* log2 of the buckets in one PoP x tier table (docs/forwarding-tables.md). Default 16. */
#ifndef BUCKET_BITS
#define BUCKET_BITS 16
#endif
#define BUCKETS (1u << BUCKET_BITS)
#define BUCKET_MASK (BUCKETS - 1)

/* Traffic tiers, ids 0..TIERS-1. Counters keep one extra row (TIERS) for packets without tier. */
#ifndef TIERS
#define TIERS 4
#endif
#define NO_TIER TIERS

#ifndef MAX_VIPS
#define MAX_VIPS 1024        /* destination prefixes (anycast VIPs) */
#endif
#ifndef MAX_BLOCKLIST
#define MAX_BLOCKLIST 65536  /* source prefixes dropped before anything else (91) */
#endif
/* IPv4 host VIPs are direct-mapped into 2^VIP4_SLOT_BITS slots by the low bits of the address. */
#ifndef VIP4_SLOT_BITS
#define VIP4_SLOT_BITS 12
#endif
#define VIP4_SLOTS (1u << VIP4_SLOT_BITS)
#define VIP4_SLOT_MASK (VIP4_SLOTS - 1)
#ifndef MAX_PEERS
#define MAX_PEERS 1024       /* prefixes GUE is accepted from */
#endif

#ifndef GUE_PORT
#define GUE_PORT 6080        /* UDP destination port of popshift GUE */
#endif
#ifndef HASH_SEED
#define HASH_SEED 0x5eed1e55u /* jhash initval; every node of a PoP must use the same */
#endif
#ifndef MAX_HOPS
#define MAX_HOPS 2           /* largest hop_count a GUE header may carry */
#endif
#define OUTER_TTL 64

/* GUE base header: version 0, C=0 (data), Hlen in 32-bit words of the private data. */
#define GUE_PRIV_VERSION 1
#define GUE_HLEN_WORDS 7
#define GUE_LEN (4 + 4 * GUE_HLEN_WORDS)          /* 32 bytes */
#define ENCAP_OVERHEAD_V4 (20 + 8 + GUE_LEN)      /* 60 bytes */
#define ENCAP_OVERHEAD_V6 (40 + 8 + GUE_LEN)      /* 80 bytes */
#define UDP_SPORT_BASE 0xc000u                    /* flow entropy lives in 49152-65535 */

/* ICMP too-big replies quote the invoking IP header and 8 bytes of it. */
#define ICMP4_QUOTE 28
#define ICMP6_QUOTE 48

/* Flags of a table bucket and of the GUE private data share their low bits. */
enum popshift_flags {
	FLAG_HAS_SECONDARY = 0x01,
	FLAG_INTER_POP = 0x02,   /* the secondary is in another PoP (64) */
	FLAG_AWAY = 0x04,        /* direction away: new connections go to the secondary (72, 76) */
	FLAG_FROM_PEER = 0x08,   /* GUE only: the packet came from another PoP, never leaves again */
	FLAG_VALID = 0x80,       /* bucket only: the entry is set */
	GUE_FLAGS_MASK = 0x0f,
};

/* Per-tier hashing: the default is the 5-tuple; ADDRS hashes source and destination only (63). */
enum popshift_tier_flags {
	TIER_HASH_ADDRS = 0x01,
};

/* State of one IPv4 host-VIP slot (struct vip4_slot). */
enum popshift_vip4_slot_kind {
	VIP4_SLOT_EMPTY = 0,     /* no /32 VIP has these low bits: only the prefix trie can match */
	VIP4_SLOT_ONE = 1,       /* exactly one: addr and value are that VIP */
	VIP4_SLOT_MANY = 2,      /* several share the slot: ask vip_host_map */
};

/* Blocklist prefilter rows (struct bitmap16), selected by the kind of source address. */
enum popshift_filter_row {
	FILTER_V4 = 0,           /* IPv4-mapped sources, by their first two IPv4 octets */
	FILTER_V6 = 1,           /* any other source, by its first 16 bits */
	FILTER_ROWS = 2,
};

enum popshift_cfg_flags {
	CFG_FIB = 0x01,          /* next hop by bpf_fib_lookup; else static nexthop_mac + XDP_TX */
	CFG_SYNCOOKIES = 0x02,   /* a listener's valid SYN cookie owns the flow */
};

enum popshift_peer_kind {
	PEER_LOCAL = 1,          /* an edge or server of this PoP */
	PEER_REMOTE = 2,         /* another PoP */
};

/* One verdict per packet; counters are indexed by tier * VERDICTS + verdict. */
enum popshift_verdict {
	V_LOCAL = 0,               /* delivered to this server's stack */
	V_FWD_INTRA = 1,           /* encapsulated to a server of this PoP (edges: every packet) */
	V_FWD_INTER = 2,           /* new connection encapsulated to another PoP */
	V_SECOND_CHANCE = 3,       /* non-initial packet without local socket, secondary in this PoP */
	V_RECEIVED_PEER = 4,       /* processed here, came from another PoP (counted once: by the
				    * server; the receiving edge counts its re-encap as FWD_INTRA) */
	V_LOCAL_HOPS_EXHAUSTED = 5,
	V_LOCAL_SELF_SECONDARY = 6,
	V_PASS_NOT_OURS = 7,       /* non-IP, VLAN, not a VIP, not GUE to us: the stack decides */
	V_PASS_UNSUPPORTED = 8,    /* to a VIP but not TCP/UDP, a fragment or IPv6 extension header */
	V_PASS_FIB_MISS = 9,       /* encapsulated, but no neighbour: the stack resolves and sends */
	V_TOO_BIG_ICMP = 10,       /* too big after encapsulation: ICMP(v6) too-big sent back */
	V_DROP_TOO_BIG = 11,       /* too big and no ICMP possible (DF clear, IPv4 options, tunnelled) */
	V_DROP_BLOCKLIST = 12,
	V_DROP_MALFORMED = 13,
	V_DROP_GUE_UNKNOWN_SRC = 14,
	V_DROP_GUE_BAD = 15,
	V_DROP_NO_BUCKET = 16,
	V_DROP_ERROR = 17,         /* a helper failed (adjust_head) */
	V_SECOND_CHANCE_INTER = 18, /* like V_SECOND_CHANCE, to a secondary in another PoP */
	VERDICTS = 19,
};

#endif
