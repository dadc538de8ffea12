/* popshift forwarder: table lookups shared by the edge and the server programs. */
#ifndef POPSHIFT_LOOKUP_H
#define POPSHIFT_LOOKUP_H

#include "hashing.h"
#include "maps.h"
#include "parsing.h"

static __always_inline void *lpm_lookup(void *map, const __u8 *addr)
{
	struct lpm_key key = {.prefixlen = 128};

	__builtin_memcpy(key.addr, addr, 16);
	return bpf_map_lookup_elem(map, &key);
}

/* Tier of a destination: host VIPs first, then the prefix trie (same answer as one LPM). */
static __always_inline struct vip_value *vip_lookup(const __u8 *addr)
{
	struct vip_value *v = bpf_map_lookup_elem(&vip_host_map, addr);

	return v ? v : lpm_lookup(&vip_map, addr);
}

static __always_inline const __u8 *self_addr(const struct config *cfg, int v6)
{
	return v6 ? cfg->self6 : cfg->self4;
}

/* Flow id of a parsed packet under the tier's hashing rule (63). */
static __always_inline __u32 packet_hash(const struct packet *p, __u32 tier)
{
	struct flow_key key = {};
	struct tier_cfg *tc = bpf_map_lookup_elem(&tier_map, &tier);

	__builtin_memcpy(key.src, p->src, 16);
	__builtin_memcpy(key.dst, p->dst, 16);
	if (!tc || !(tc->flags & TIER_HASH_ADDRS)) {
		key.sport = p->sport;
		key.dport = p->dport;
		key.proto = p->proto;
	}
	return flow_hash(&key);
}

static __always_inline struct bucket *bucket_lookup(__u32 tier, __u32 hash)
{
	__u32 key = tier * BUCKETS + (hash & BUCKET_MASK);
	struct bucket *b = bpf_map_lookup_elem(&table_map, &key);

	return b && (b->flags & FLAG_VALID) ? b : 0;
}

static __always_inline __u16 entropy_port(__u32 hash)
{
	return UDP_SPORT_BASE | (hash >> 18);
}

#endif
