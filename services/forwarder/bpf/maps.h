/* popshift forwarder: BPF maps (libbpf BTF-style definitions). Names are the pin names. */
#ifndef POPSHIFT_MAPS_H
#define POPSHIFT_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "consts.h"
#include "structs.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config_map SEC(".maps");

/* One PoP x tier table: key = bucket. The loader creates two per tier (loader.py). Sizes, not
 * types: clang emits only a forward declaration of a struct this deep in a map definition. */
struct bucket_table {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BUCKETS);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct bucket));
};

/* The table in force per tier: key = tier. A table in force is never written; the loader
 * writes the other one and swaps it in here. The kernel waits for running programs when an
 * entry of a map-in-map is replaced from user space, so a packet sees one whole table, old or
 * new, never a bucket that is half written.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, TIERS);
	__type(key, __u32);
	__array(values, struct bucket_table);
} table_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TIERS);
	__type(key, __u32);
	__type(value, struct tier_cfg);
} tier_map SEC(".maps");

/* Host VIPs (/32, /128) by exact match: a hash lookup is cheaper than a trie walk, and a host
 * prefix is the longest possible match, so trying it first keeps LPM semantics. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_VIPS);
	__type(key, struct addr);
	__type(value, struct vip_value);
} vip_host_map SEC(".maps");

/* IPv4 host VIPs again, direct-mapped by the low VIP4_SLOT_BITS of the address: the IPv4 fast
 * path is one inlined array read instead of a hash lookup. The loader keeps it equal to the
 * IPv4-mapped keys of vip_host_map (a slot shared by several VIPs says so and defers to it). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, VIP4_SLOTS);
	__type(key, __u32);
	__type(value, struct vip4_slot);
} vip4_slot_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_VIPS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_key);
	__type(value, struct vip_value);
} vip_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_BLOCKLIST);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_key);
	__type(value, __u32);
} blocklist_map SEC(".maps");

/* Blocklist prefilter: in row FILTER_V4 bit i is set when some blocklist prefix covers an
 * IPv4-mapped address whose first two IPv4 octets are i; in row FILTER_V6, when some prefix
 * covers an address (any) whose first 16 bits are i. A clear bit proves the trie has no match,
 * so the trie walk is skipped; a set bit only means "walk the trie". All zero = empty list. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FILTER_ROWS);
	__type(key, __u32);
	__type(value, struct bitmap16);
} blocklist_filter_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_PEERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_key);
	__type(value, struct peer_value);
} peer_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, (TIERS + 1) * VERDICTS);
	__type(key, __u32);
	__type(value, struct counter);
} counter_map SEC(".maps");

#endif
