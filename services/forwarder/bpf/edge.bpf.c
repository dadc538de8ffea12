// SPDX-License-Identifier: GPL-2.0
/* popshift edge: the PoP's forwarding unit (61-67, 71-74, 90-94) and the receiving side of
 * inter-PoP tunnels (104).
 *
 * Client packet: blocklist -> tier by VIP -> flow hash -> bucket -> GUE to the bucket's primary
 * with its secondary, flags and the landing PoP id. GUE addressed to this node from a peer PoP:
 * blocklist on the inner source, decapsulate and re-encapsulate to a local server with FLAG_FROM_PEER, dropping any inter-PoP
 * secondary, so that a packet from another PoP never leaves this PoP again and the server counts
 * it as received (the edge counts FWD_INTRA, as for its own clients' packets).
 */
#include "icmp.h"
#include "lookup.h"

static __always_inline void fill_gue(struct gue_hdr *g, const struct bucket *b, __u8 flags,
				     __be16 landing_pop, __u32 tier)
{
	__builtin_memset(g, 0, sizeof(*g));
	g->ver_c_hlen = GUE_HLEN_WORDS;
	g->priv_version = GUE_PRIV_VERSION;
	g->priv_flags = flags;
	g->hop_count = (flags & FLAG_HAS_SECONDARY) ? 1 : 0;
	g->landing_pop = landing_pop;
	g->tier = tier;
	if (flags & FLAG_HAS_SECONDARY) {
		g->secondary_pop = bpf_htons(b->secondary_pop);
		__builtin_memcpy(g->secondary, b->secondary, 16);
	}
}

/* The packet is larger than the path MTU once encapsulated: tell the client, or drop. */
static __always_inline int reply_too_big(struct xdp_md *ctx, const struct config *cfg,
					 const struct packet *p, const __u8 *dst, __u32 tier,
					 __u32 bytes)
{
	__u32 mtu = cfg->mtu - encap_overhead(dst);
	int rc;

	if (p->v6)
		rc = icmp6_too_big(ctx, mtu);
	else if (p->df && !p->options)
		rc = icmp4_too_big(ctx, mtu);
	else
		return verdict(tier, V_DROP_TOO_BIG, bytes, XDP_DROP);
	if (rc)
		return verdict(tier, V_DROP_ERROR, bytes, XDP_DROP);
	return verdict(tier, V_TOO_BIG_ICMP, bytes, XDP_TX);
}

/* GUE addressed to this edge: only from peer PoPs, balanced over local servers only. */
static __always_inline int receive_from_peer(struct xdp_md *ctx, const struct config *cfg,
					     const struct packet *outer, const __u8 *ingress_mac,
					     __u32 bytes)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct peer_value *peer = lpm_lookup(&peer_map, outer->src);
	struct vip_value *vip;
	struct packet in = {};
	struct encap e = {};
	struct gue_hdr g;
	struct bucket *b;
	__u32 tier, hash;
	__u8 flags;
	int rc;

	if (!peer || peer->kind != PEER_REMOTE)
		return verdict(NO_TIER, V_DROP_GUE_UNKNOWN_SRC, bytes, XDP_DROP);
	rc = parse_gue(data, data_end, bytes, outer, &g, &in);
	if (rc == PARSE_MALFORMED)
		return verdict(NO_TIER, V_DROP_MALFORMED, bytes, XDP_DROP);
	if (rc != PARSE_OK)
		return verdict(NO_TIER, V_DROP_GUE_BAD, bytes, XDP_DROP);
	if (blocklisted(in.src))	/* another PoP's client: our blocklist too (91) */
		return verdict(NO_TIER, V_DROP_BLOCKLIST, bytes, XDP_DROP);
	vip = vip_lookup(in.dst);
	if (!vip || vip->tier >= TIERS)
		return verdict(NO_TIER, V_DROP_NO_BUCKET, bytes, XDP_DROP);
	tier = vip->tier;
	hash = packet_hash(&in, tier);
	b = bucket_lookup(tier, hash);
	if (!b)
		return verdict(tier, V_DROP_NO_BUCKET, bytes, XDP_DROP);
	flags = FLAG_FROM_PEER;
	if (!(b->flags & FLAG_INTER_POP))
		flags |= b->flags & (FLAG_HAS_SECONDARY | FLAG_AWAY);
	fill_gue(&e.gue, b, flags, g.landing_pop, tier);
	__builtin_memcpy(e.dst, b->primary, 16);
	e.sport = entropy_port(hash);
	e.inner_len = in.l3_len;
	e.tos = in.tos;
	e.inner_v6 = in.v6;
	if (too_big(cfg, in.l3_len, e.dst))
		return verdict(tier, V_DROP_TOO_BIG, bytes, XDP_DROP);
	/* FWD_INTRA, not RECEIVED_PEER: the server it goes to counts it as received (it sees
	 * FLAG_FROM_PEER), so the PoP's nodes together count every packet once.
	 */
	return forward(ctx, cfg, in.l3_off - ETH_HLEN, &e, ingress_mac, tier, V_FWD_INTRA, bytes);
}

SEC("xdp")
int popshift_edge(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 bytes = ctx->data_end - ctx->data;
	struct packet p = {};
	struct encap e = {};
	struct vip_value *vip;
	struct config *cfg;
	struct bucket *b;
	__u8 ingress_mac[ETH_ALEN];
	__u32 zero = 0, tier, hash;
	int v6, l4, rc;

	cfg = bpf_map_lookup_elem(&config_map, &zero);
	if (!cfg)
		return XDP_ABORTED;
	rc = parse_frame(data, data_end, bytes, &p, ingress_mac, &v6);
	if (rc == PARSE_NOT_IP)
		return verdict(NO_TIER, V_PASS_NOT_OURS, bytes, XDP_PASS);
	if (rc != PARSE_OK)
		return verdict(NO_TIER, V_DROP_MALFORMED, bytes, XDP_DROP);
	if (blocklisted(p.src))
		return verdict(NO_TIER, V_DROP_BLOCKLIST, bytes, XDP_DROP);
	l4 = parse_l4(data, data_end, bytes, &p);
	if (l4 == PARSE_OK && p.proto == IPPROTO_UDP && p.dport == bpf_htons(GUE_PORT) &&
	    addr_eq(p.dst, self_addr(cfg, v6)))
		return receive_from_peer(ctx, cfg, &p, ingress_mac, bytes);
	vip = vip_lookup(p.dst);
	if (!vip)
		return verdict(NO_TIER, V_PASS_NOT_OURS, bytes, XDP_PASS);
	if (vip->tier >= TIERS)
		return verdict(NO_TIER, V_DROP_NO_BUCKET, bytes, XDP_DROP);
	tier = vip->tier;
	if (l4 == PARSE_UNSUPPORTED)
		return verdict(tier, V_PASS_UNSUPPORTED, bytes, XDP_PASS);
	if (l4 != PARSE_OK)
		return verdict(tier, V_DROP_MALFORMED, bytes, XDP_DROP);
	hash = packet_hash(&p, tier);
	b = bucket_lookup(tier, hash);
	if (!b)
		return verdict(tier, V_DROP_NO_BUCKET, bytes, XDP_DROP);
	__builtin_memcpy(e.dst, b->primary, 16);
	if (too_big(cfg, p.l3_len, e.dst))
		return reply_too_big(ctx, cfg, &p, e.dst, tier, bytes);
	fill_gue(&e.gue, b, b->flags & GUE_FLAGS_MASK & ~FLAG_FROM_PEER,
		 bpf_htons(cfg->pop_id), tier);
	e.sport = entropy_port(hash);
	e.inner_len = p.l3_len;
	e.tos = p.tos;
	e.inner_v6 = v6;
	return forward(ctx, cfg, 0, &e, ingress_mac, tier, V_FWD_INTRA, bytes);
}

char LICENSE[] SEC("license") = "GPL";
