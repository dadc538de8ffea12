/* popshift forwarder: every layout shared by the XDP programs and Python.
 *
 * Addresses are 16 bytes everywhere; IPv4 is stored IPv4-mapped (::ffff:a.b.c.d) so that one
 * key type and one compare serve both families. Python mirrors these structs in layout.py.
 */
#ifndef POPSHIFT_STRUCTS_H
#define POPSHIFT_STRUCTS_H

#include <linux/types.h>

/* Exact-match key of the host-VIP map. */
struct addr {
	__u8 addr[16];
};

/* LPM key of the VIP, blocklist and peer maps; IPv4 prefixes are stored as 96 + len. */
struct lpm_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct vip_value {
	__u32 tier;
};

/* One slot of the direct-mapped IPv4 host-VIP array (enum popshift_vip4_slot_kind). */
struct vip4_slot {
	__be32 addr;            /* the VIP, network order, when kind is VIP4_SLOT_ONE */
	__u32 kind;
	struct vip_value value;
};

/* 2^16 bits, one per 16-bit address selector: the blocklist prefilter (maps.h). */
struct bitmap16 {
	__u64 words[1024];
};

struct tier_cfg {
	__u32 flags;            /* enum popshift_tier_flags */
};

struct peer_value {
	__u16 pop_id;
	__u8 kind;              /* enum popshift_peer_kind */
	__u8 pad;
};

/* One bucket of the PoP x tier table (docs/forwarding-tables.md; schemas/bucket.py in Python,
 * schemas/redis-table.md for the same bucket in Redis). */
struct bucket {
	__u8 primary[16];
	__u8 secondary[16];
	__u16 secondary_pop;
	__u8 flags;             /* enum popshift_flags */
	__u8 pad[5];
};

/* Node settings, one entry, written by the control plane. */
struct config {
	__u8 self4[16];         /* this node's IPv4 (mapped): outer source, GUE destination */
	__u8 self6[16];
	__u8 nexthop_mac[6];    /* used when CFG_FIB is clear */
	__u16 pop_id;
	__u16 mtu;              /* path MTU toward servers and peers, L3 bytes */
	__u16 flags;            /* enum popshift_cfg_flags */
	__u32 pad;
};

struct counter {
	__u64 packets;
	__u64 bytes;
};

/* GUE header (draft-ietf-intarea-gue, variant 0) with popshift's private data.
 * Documented byte by byte in schemas/gue.md.
 */
struct gue_hdr {
	__u8 ver_c_hlen;        /* ver:2 (0) | C:1 (0) | Hlen:5 (GUE_HLEN_WORDS) */
	__u8 proto;             /* inner IP protocol: 4 (IPv4) or 41 (IPv6) */
	__be16 flags;           /* GUE flags: 0 (no extension fields) */
	__u8 priv_version;      /* GUE_PRIV_VERSION */
	__u8 priv_flags;        /* enum popshift_flags & GUE_FLAGS_MASK */
	__u8 hop_index;         /* re-encapsulations so far */
	__u8 hop_count;         /* re-encapsulations allowed */
	__be16 landing_pop;     /* PoP where anycast delivered the packet */
	__be16 secondary_pop;   /* PoP of the secondary, 0 = none */
	__u8 tier;
	__u8 reserved[3];
	__u8 secondary[16];     /* secondary hop address, IPv4-mapped for IPv4 */
};

/* Hash input: IPv4 mapped; ports and proto zero for TIER_HASH_ADDRS. 10 words. */
struct flow_key {
	__u8 src[16];
	__u8 dst[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

#endif
