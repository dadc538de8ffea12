/* popshift forwarder: per-CPU counters, one row per tier (plus NO_TIER) and verdict. */
#ifndef POPSHIFT_COUNTERS_H
#define POPSHIFT_COUNTERS_H

#include "maps.h"

/* Count the packet and return the XDP action, so every exit is one counted statement. */
static __always_inline int verdict(__u32 tier, __u32 v, __u32 bytes, int action)
{
	__u32 key;
	struct counter *c;

	if (tier > NO_TIER)
		tier = NO_TIER;
	key = tier * VERDICTS + v;
	c = bpf_map_lookup_elem(&counter_map, &key);
	if (c) {
		c->packets += 1;
		c->bytes += bytes;
	}
	return action;
}

#endif
