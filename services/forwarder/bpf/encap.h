/* popshift forwarder: GUE encapsulation, decapsulation and transmission.
 *
 * Outer headers written here: Ethernet | IPv4 (DF, id 0, TTL 64, TOS copied from the inner
 * packet) or IPv6 (traffic class copied, flow label = UDP source port, hop limit 64) | UDP
 * (source port = flow entropy, destination GUE_PORT, checksum 0 per RFC 6935/6936) | GUE.
 * Overhead: ENCAP_OVERHEAD_V4 (60) or ENCAP_OVERHEAD_V6 (80) bytes on top of the inner packet.
 */
#ifndef POPSHIFT_ENCAP_H
#define POPSHIFT_ENCAP_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "counters.h"
#include "parsing.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* Everything the outer headers need besides the node config. */
struct encap {
	struct gue_hdr gue;      /* private data complete; proto is filled in by encap_push */
	__u8 dst[16];            /* outer destination, IPv4-mapped for IPv4 */
	__u16 sport;             /* host order */
	__u16 inner_len;         /* inner L3 bytes */
	__u8 tos;
	__u8 inner_v6;
};

static __always_inline __u16 csum_fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

static __always_inline __u32 csum_words(const __u16 *w, int n, __u32 s)
{
#pragma unroll
	for (int i = 0; i < n; i++)
		s += w[i];
	return s;
}

static __always_inline __u32 encap_overhead(const __u8 *dst)
{
	return is_mapped4(dst) ? ENCAP_OVERHEAD_V4 : ENCAP_OVERHEAD_V6;
}

/* Would the packet exceed the path MTU once encapsulated toward dst? mtu 0 = unchecked. */
static __always_inline int too_big(const struct config *cfg, __u32 inner_len, const __u8 *dst)
{
	return cfg->mtu && inner_len + encap_overhead(dst) > cfg->mtu;
}

/* Replace `removed` bytes after the Ethernet header (an old outer header, or none) with new
 * outer IP / UDP / GUE headers. The Ethernet addresses are left for transmit() to set.
 */
static __always_inline int encap_push(struct xdp_md *ctx, const struct config *cfg, __u32 removed,
				      const struct encap *e)
{
	int v6 = !is_mapped4(e->dst);
	__u32 overhead = v6 ? ENCAP_OVERHEAD_V6 : ENCAP_OVERHEAD_V4;
	__u16 udp_len = sizeof(struct udphdr) + GUE_LEN + e->inner_len;
	void *data, *data_end;
	struct ethhdr eth;
	struct udphdr *uh;
	struct gue_hdr *gh;

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + sizeof(eth) > data_end)
		return -1;
	__builtin_memcpy(&eth, data, sizeof(eth));
	if (bpf_xdp_adjust_head(ctx, (int)removed - (int)overhead))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (!v6) {
		struct iphdr *ip = data + sizeof(eth);

		if (data + sizeof(eth) + ENCAP_OVERHEAD_V4 > data_end)
			return -1;
		eth.h_proto = bpf_htons(ETH_P_IP);
		/* Five 32-bit stores of words built in registers; the checksum is summed from the
		 * same registers (one's complement sum of the 16-bit halves, in memory order).
		 */
		{
			__u32 w0 = bpf_htonl((0x4500u | e->tos) << 16 | (udp_len + sizeof(*ip)));
			__u32 w1 = bpf_htonl(0x4000);             /* id 0, DF */
			__u32 w2 = bpf_htonl((OUTER_TTL << 24) | (IPPROTO_UDP << 16)); /* check 0 */
			__u32 sa, da;
			__u64 sum;

			__builtin_memcpy(&sa, &cfg->self4[12], 4);
			__builtin_memcpy(&da, &e->dst[12], 4);
			sum = (__u64)w0 + w1 + w2 + sa + da;
			sum = (sum & 0xffffffff) + (sum >> 32);
			sum = (sum & 0xffffffff) + (sum >> 32);
			((__u32 *)ip)[0] = w0;
			((__u32 *)ip)[1] = w1;
			((__u32 *)ip)[2] = w2;
			((__u32 *)ip)[3] = sa;
			((__u32 *)ip)[4] = da;
			ip->check = csum_fold((__u32)(sum & 0xffff) + (__u32)(sum >> 16));
		}
		uh = (void *)(ip + 1);
	} else {
		struct ipv6hdr *ip6 = data + sizeof(eth);
		__u32 first;

		if (data + sizeof(eth) + ENCAP_OVERHEAD_V6 > data_end)
			return -1;
		eth.h_proto = bpf_htons(ETH_P_IPV6);
		first = (6u << 28) | ((__u32)e->tos << 20) | e->sport;
		*(__be32 *)ip6 = bpf_htonl(first);
		ip6->payload_len = bpf_htons(udp_len);
		ip6->nexthdr = IPPROTO_UDP;
		ip6->hop_limit = OUTER_TTL;
		__builtin_memcpy(&ip6->saddr, cfg->self6, 16);
		__builtin_memcpy(&ip6->daddr, e->dst, 16);
		uh = (void *)(ip6 + 1);
	}
	__builtin_memcpy(data, &eth, sizeof(eth));
	uh->source = bpf_htons(e->sport);
	uh->dest = bpf_htons(GUE_PORT);
	uh->len = bpf_htons(udp_len);
	uh->check = 0;
	gh = (void *)(uh + 1);
	__builtin_memcpy(gh, &e->gue, sizeof(*gh));
	gh->proto = e->inner_v6 ? IPPROTO_IPV6 : IPPROTO_IPIP;
	return 0;
}

/* Remove the outer IP / UDP / GUE headers; the inner packet keeps the outer Ethernet addresses. */
static __always_inline int decap(struct xdp_md *ctx, __u32 removed, int inner_v6)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr eth;

	if (data + sizeof(eth) > data_end)
		return -1;
	__builtin_memcpy(&eth, data, sizeof(eth));
	eth.h_proto = bpf_htons(inner_v6 ? ETH_P_IPV6 : ETH_P_IP);
	if (bpf_xdp_adjust_head(ctx, (int)removed))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + sizeof(eth) > data_end)
		return -1;
	__builtin_memcpy(data, &eth, sizeof(eth));
	return 0;
}

/* Send an encapsulated packet: next hop by FIB (XDP_TX on the ingress device, XDP_REDIRECT to
 * another) or, without CFG_FIB, to the static next-hop MAC by XDP_TX. A FIB miss (no neighbour
 * yet) passes the encapsulated packet to the stack, which resolves the neighbour and routes it.
 */
static __always_inline int transmit(struct xdp_md *ctx, const struct config *cfg,
				    const __u8 *ingress_mac, __u32 tier, __u32 v, __u32 bytes)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct bpf_fib_lookup fib = {};
	long rc;

	if ((void *)(eth + 1) > data_end)
		return verdict(tier, V_DROP_ERROR, bytes, XDP_DROP);
	if (!(cfg->flags & CFG_FIB)) {
		__builtin_memcpy(eth->h_source, ingress_mac, ETH_ALEN);
		__builtin_memcpy(eth->h_dest, cfg->nexthop_mac, ETH_ALEN);
		return verdict(tier, v, bytes, XDP_TX);
	}
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end)
			return verdict(tier, V_DROP_ERROR, bytes, XDP_DROP);
		fib.family = AF_INET;
		fib.tos = ip->tos;
		fib.tot_len = bpf_ntohs(ip->tot_len);
		fib.ipv4_src = ip->saddr;
		fib.ipv4_dst = ip->daddr;
	} else {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return verdict(tier, V_DROP_ERROR, bytes, XDP_DROP);
		fib.family = AF_INET6;
		fib.tot_len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
		__builtin_memcpy(fib.ipv6_src, &ip6->saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, &ip6->daddr, 16);
	}
	fib.l4_protocol = IPPROTO_UDP;
	fib.ifindex = ctx->ingress_ifindex;
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return verdict(tier, V_PASS_FIB_MISS, bytes, XDP_PASS);
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	if (fib.ifindex == ctx->ingress_ifindex)
		return verdict(tier, v, bytes, XDP_TX);
	return verdict(tier, v, bytes, bpf_redirect(fib.ifindex, 0));
}

/* Encapsulate (replacing `removed` bytes of old outer headers) and transmit. */
static __always_inline int forward(struct xdp_md *ctx, const struct config *cfg, __u32 removed,
				   const struct encap *e, const __u8 *ingress_mac, __u32 tier,
				   __u32 v, __u32 bytes)
{
	if (encap_push(ctx, cfg, removed, e))
		return verdict(tier, V_DROP_ERROR, bytes, XDP_DROP);
	return transmit(ctx, cfg, ingress_mac, tier, v, bytes);
}

#endif
