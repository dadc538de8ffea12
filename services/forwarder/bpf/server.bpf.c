// SPDX-License-Identifier: GPL-2.0
/* popshift server: the compute server's half of the forwarding unit (74-77, 96-102).
 *
 * GUE from a configured peer prefix is decapsulated. If a local socket owns the flow, or the
 * packet came straight from another PoP, it is delivered here; a packet our edge received from
 * another PoP (FLAG_FROM_PEER) may still take an intra-PoP hop, and is counted RECEIVED_PEER
 * wherever it is delivered. Otherwise a non-initial packet gets its
 * second chance at the secondary (75), and an initial one follows the bucket's direction (76).
 * It never forwards to itself, and delivers locally once the hops are used up.
 */
#include "encap.h"
#include "lookup.h"

/* Does a local socket own the inner flow? TCP: established, request or timewait socket, or a
 * valid SYN cookie on the listener when CFG_SYNCOOKIES is set. UDP: a connected socket.
 */
static __always_inline int owns_flow(struct xdp_md *ctx, const struct config *cfg,
				     const struct packet *in)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	__u32 tlen;
	int owned;

	if (in->v6) {
		__builtin_memcpy(t.ipv6.saddr, in->src, 16);
		__builtin_memcpy(t.ipv6.daddr, in->dst, 16);
		t.ipv6.sport = in->sport;
		t.ipv6.dport = in->dport;
		tlen = sizeof(t.ipv6);
	} else {
		__builtin_memcpy(&t.ipv4.saddr, &in->src[12], 4);
		__builtin_memcpy(&t.ipv4.daddr, &in->dst[12], 4);
		t.ipv4.sport = in->sport;
		t.ipv4.dport = in->dport;
		tlen = sizeof(t.ipv4);
	}
	if (in->proto == IPPROTO_UDP) {
		sk = bpf_sk_lookup_udp(ctx, &t, tlen, BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return 0;
		owned = sk->dst_port != 0;
		bpf_sk_release(sk);
		return owned;
	}
	sk = bpf_skc_lookup_tcp(ctx, &t, tlen, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	owned = sk->state != BPF_TCP_LISTEN;
	if (!owned && (cfg->flags & CFG_SYNCOOKIES) &&
	    (in->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_ACK &&
	    in->l3_off <= MAX_L3_OFF && in->l4_off <= MAX_L3_OFF + 60) {
		void *iph = data + in->l3_off;
		struct tcphdr *th = data + in->l4_off;

		if (in->v6 && iph + sizeof(struct ipv6hdr) <= data_end && (void *)(th + 1) <= data_end)
			owned = !bpf_tcp_check_syncookie(sk, iph, sizeof(struct ipv6hdr), th,
							 sizeof(*th));
		else if (!in->v6 && iph + sizeof(struct iphdr) <= data_end &&
			 (void *)(th + 1) <= data_end)
			owned = !bpf_tcp_check_syncookie(sk, iph, sizeof(struct iphdr), th,
							 sizeof(*th));
	}
	bpf_sk_release(sk);
	return owned;
}

static __always_inline int deliver(struct xdp_md *ctx, const struct packet *in, __u32 tier,
				   __u32 v, __u32 bytes)
{
	if (decap(ctx, in->l3_off - ETH_HLEN, in->v6))
		return verdict(tier, V_DROP_ERROR, bytes, XDP_DROP);
	return verdict(tier, v, bytes, XDP_PASS);
}

SEC("xdp")
int popshift_server(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 bytes = ctx->data_end - ctx->data;
	struct packet p = {}, in = {};
	struct peer_value *peer;
	struct config *cfg;
	struct encap e = {};
	__u8 ingress_mac[ETH_ALEN];
	__u32 zero = 0, tier, v, local;
	int v6, rc, initial, inter, from_peer;

	cfg = bpf_map_lookup_elem(&config_map, &zero);
	if (!cfg)
		return XDP_ABORTED;
	rc = parse_frame(data, data_end, bytes, &p, ingress_mac, &v6);
	if (rc == PARSE_NOT_IP)
		return verdict(NO_TIER, V_PASS_NOT_OURS, bytes, XDP_PASS);
	if (rc != PARSE_OK)
		return verdict(NO_TIER, V_DROP_MALFORMED, bytes, XDP_DROP);
	if (parse_l4(data, data_end, bytes, &p) != PARSE_OK || p.proto != IPPROTO_UDP ||
	    p.dport != bpf_htons(GUE_PORT) || !addr_eq(p.dst, self_addr(cfg, v6)))
		return verdict(NO_TIER, V_PASS_NOT_OURS, bytes, XDP_PASS);
	peer = lpm_lookup(&peer_map, p.src);
	if (!peer)
		return verdict(NO_TIER, V_DROP_GUE_UNKNOWN_SRC, bytes, XDP_DROP);
	rc = parse_gue(data, data_end, bytes, &p, &e.gue, &in);
	if (rc == PARSE_MALFORMED)
		return verdict(NO_TIER, V_DROP_MALFORMED, bytes, XDP_DROP);
	if (rc == PARSE_GUE_BAD)
		return verdict(NO_TIER, V_DROP_GUE_BAD, bytes, XDP_DROP);
	/* Straight from another PoP: no edge of ours checked the client's source. */
	if (peer->kind == PEER_REMOTE && blocklisted(in.src))
		return verdict(NO_TIER, V_DROP_BLOCKLIST, bytes, XDP_DROP);
	tier = e.gue.tier;
	/* From another PoP, directly or through our edge (FLAG_FROM_PEER): every local delivery
	 * counts as received, so the PoP's counters keep it out of its native demand.
	 */
	from_peer = peer->kind == PEER_REMOTE || (e.gue.priv_flags & FLAG_FROM_PEER);
	local = from_peer ? V_RECEIVED_PEER : V_LOCAL;
	if (rc == PARSE_UNSUPPORTED)
		return deliver(ctx, &in, tier, local, bytes);
	if (peer->kind == PEER_REMOTE)
		return deliver(ctx, &in, tier, V_RECEIVED_PEER, bytes);
	if (owns_flow(ctx, cfg, &in))
		return deliver(ctx, &in, tier, local, bytes);
	if (!(e.gue.priv_flags & FLAG_HAS_SECONDARY))
		return deliver(ctx, &in, tier, local, bytes);
	initial = in.proto == IPPROTO_UDP ||
		  (in.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	if (initial && !(e.gue.priv_flags & FLAG_AWAY))
		return deliver(ctx, &in, tier, local, bytes);
	if (e.gue.hop_index >= e.gue.hop_count)
		return deliver(ctx, &in, tier, from_peer ? local : V_LOCAL_HOPS_EXHAUSTED, bytes);
	if (addr_eq(e.gue.secondary, self_addr(cfg, !is_mapped4(e.gue.secondary))))
		return deliver(ctx, &in, tier, from_peer ? local : V_LOCAL_SELF_SECONDARY, bytes);
	inter = e.gue.priv_flags & FLAG_INTER_POP;
	if (!initial)
		v = inter ? V_SECOND_CHANCE_INTER : V_SECOND_CHANCE;
	else
		v = inter ? V_FWD_INTER : V_FWD_INTRA;
	__builtin_memcpy(e.dst, e.gue.secondary, 16);
	e.gue.hop_index += 1;
	e.gue.priv_flags &= ~FLAG_HAS_SECONDARY;
	e.sport = bpf_ntohs(p.sport);
	e.inner_len = in.l3_len;
	e.tos = in.tos;
	e.inner_v6 = in.v6;
	if (too_big(cfg, in.l3_len, e.dst))
		return verdict(tier, V_DROP_TOO_BIG, bytes, XDP_DROP);
	return forward(ctx, cfg, in.l3_off - ETH_HLEN, &e, ingress_mac, tier, v, bytes);
}

char LICENSE[] SEC("license") = "GPL";
