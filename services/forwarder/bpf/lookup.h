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

/* Tier of a destination: host VIPs first, then the prefix trie (same answer as one LPM).
 * IPv4-mapped destinations try their direct-mapped slot first: a hit is the host VIP itself, an
 * empty slot or another VIP in it proves there is no host VIP for this address.
 */
static __always_inline struct vip_value *vip_lookup(const __u8 *addr)
{
	struct vip_value *v;

	if (is_mapped4(addr)) {
		__be32 a = *(const __be32 *)&addr[12];
		__u32 slot = bpf_ntohl(a) & VIP4_SLOT_MASK;
		struct vip4_slot *s = bpf_map_lookup_elem(&vip4_slot_map, &slot);

		if (s && s->kind == VIP4_SLOT_ONE && s->addr == a)
			return &s->value;
		if (s && s->kind != VIP4_SLOT_MANY)
			return lpm_lookup(&vip_map, addr);
	}
	v = bpf_map_lookup_elem(&vip_host_map, addr);
	return v ? v : lpm_lookup(&vip_map, addr);
}

/* Is the source blocklisted? The prefilter bit answers "no" without walking the trie. */
static __always_inline int blocklisted(const __u8 *addr)
{
	__u32 row = is_mapped4(addr) ? FILTER_V4 : FILTER_V6;
	__u32 sel = row == FILTER_V4 ? ((__u32)addr[12] << 8 | addr[13])
				     : ((__u32)addr[0] << 8 | addr[1]);
	struct bitmap16 *f = bpf_map_lookup_elem(&blocklist_filter_map, &row);

	if (f && !((f->words[(sel >> 6) & 1023] >> (sel & 63)) & 1))
		return 0;
	return lpm_lookup(&blocklist_map, addr) != 0;
}

static __always_inline const __u8 *self_addr(const struct config *cfg, int v6)
{
	return v6 ? cfg->self6 : cfg->self4;
}

/* Flow id of a parsed packet under the tier's hashing rule (63). An IPv4 packet's addresses
 * are IPv4-mapped (map4 in parse_l3), so its key is rebuilt from the two IPv4 words: the
 * constant words are then known to the compiler, which folds the first jhash round away. Same
 * key bytes, same hash.
 */
static __always_inline __u32 packet_hash(const struct packet *p, __u32 tier)
{
	struct flow_key key = {};
	struct tier_cfg *tc = bpf_map_lookup_elem(&tier_map, &tier);

	if (!tc || !(tc->flags & TIER_HASH_ADDRS)) {
		key.sport = p->sport;
		key.dport = p->dport;
		key.proto = p->proto;
	}
	if (!p->v6) {
		map4(key.src, *(const __be32 *)&p->src[12]);
		map4(key.dst, *(const __be32 *)&p->dst[12]);
		return flow_hash(&key);
	}
	__builtin_memcpy(key.src, p->src, 16);
	__builtin_memcpy(key.dst, p->dst, 16);
	return flow_hash(&key);
}

/* The tier's table in force, then the bucket: no tier table (not yet written) = no bucket. */
static __always_inline struct bucket *bucket_lookup(__u32 tier, __u32 hash)
{
	__u32 key = hash & BUCKET_MASK;
	void *table = bpf_map_lookup_elem(&table_map, &tier);
	struct bucket *b;

	if (!table)
		return 0;
	b = bpf_map_lookup_elem(table, &key);
	return b && (b->flags & FLAG_VALID) ? b : 0;
}

static __always_inline __u16 entropy_port(__u32 hash)
{
	return UDP_SPORT_BASE | (hash >> 18);
}

#endif
