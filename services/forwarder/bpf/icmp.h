/* popshift forwarder: "too big after encapsulation" replies (edge only).
 *
 * The reply goes back out of the ingress device (XDP_TX, MACs swapped) from the VIP to the
 * client, announcing mtu - overhead: ICMP type 3 code 4 quoting the IPv4 header and 8 bytes
 * (only for DF packets without IPv4 options), ICMPv6 type 2 quoting the IPv6 header and 8 bytes.
 */
#ifndef POPSHIFT_ICMP_H
#define POPSHIFT_ICMP_H

#include <linux/icmp.h>
#include <linux/icmpv6.h>
#include "encap.h"

#define ICMP4_REPLY_LEN (ETH_HLEN + 20 + 8 + ICMP4_QUOTE)
#define ICMP6_REPLY_LEN (ETH_HLEN + 40 + 8 + ICMP6_QUOTE)

/* Resize the frame to `new_len` after prepending `grow` bytes; returns 0 on success. */
static __always_inline int reshape(struct xdp_md *ctx, int grow, int new_len)
{
	if (bpf_xdp_adjust_head(ctx, -grow))
		return -1;
	return bpf_xdp_adjust_tail(ctx, new_len - (int)(ctx->data_end - ctx->data)) ? -1 : 0;
}

static __always_inline int icmp4_too_big(struct xdp_md *ctx, __u16 mtu)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr eth;
	struct iphdr old, *ip;
	struct icmphdr *ic;

	if (data + ETH_HLEN + ICMP4_QUOTE > data_end)
		return -1;
	__builtin_memcpy(&eth, data, sizeof(eth));
	__builtin_memcpy(&old, data + ETH_HLEN, sizeof(old));
	if (reshape(ctx, 20 + 8, ICMP4_REPLY_LEN))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + ICMP4_REPLY_LEN > data_end)
		return -1;
	__builtin_memcpy(((struct ethhdr *)data)->h_dest, eth.h_source, ETH_ALEN);
	__builtin_memcpy(((struct ethhdr *)data)->h_source, eth.h_dest, ETH_ALEN);
	((struct ethhdr *)data)->h_proto = bpf_htons(ETH_P_IP);
	ip = data + ETH_HLEN;
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = bpf_htons(20 + 8 + ICMP4_QUOTE);
	ip->id = 0;
	ip->frag_off = 0;
	ip->ttl = OUTER_TTL;
	ip->protocol = IPPROTO_ICMP;
	ip->check = 0;
	ip->saddr = old.daddr;
	ip->daddr = old.saddr;
	ip->check = csum_fold(csum_words((__u16 *)ip, 10, 0));
	ic = (void *)(ip + 1);
	ic->type = ICMP_DEST_UNREACH;
	ic->code = ICMP_FRAG_NEEDED;
	ic->checksum = 0;
	ic->un.frag.__unused = 0;
	ic->un.frag.mtu = bpf_htons(mtu);
	ic->checksum = csum_fold(csum_words((__u16 *)ic, (8 + ICMP4_QUOTE) / 2, 0));
	return 0;
}

static __always_inline int icmp6_too_big(struct xdp_md *ctx, __u32 mtu)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr eth;
	struct ipv6hdr *ip6;
	struct icmp6hdr *ic;
	__u8 src[16], dst[16];
	__u32 s;

	if (data + ETH_HLEN + ICMP6_QUOTE > data_end)
		return -1;
	__builtin_memcpy(&eth, data, sizeof(eth));
	__builtin_memcpy(src, data + ETH_HLEN + 8, 16);
	__builtin_memcpy(dst, data + ETH_HLEN + 24, 16);
	if (reshape(ctx, 40 + 8, ICMP6_REPLY_LEN))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + ICMP6_REPLY_LEN > data_end)
		return -1;
	__builtin_memcpy(((struct ethhdr *)data)->h_dest, eth.h_source, ETH_ALEN);
	__builtin_memcpy(((struct ethhdr *)data)->h_source, eth.h_dest, ETH_ALEN);
	((struct ethhdr *)data)->h_proto = bpf_htons(ETH_P_IPV6);
	ip6 = data + ETH_HLEN;
	*(__be32 *)ip6 = bpf_htonl(6u << 28);
	ip6->payload_len = bpf_htons(8 + ICMP6_QUOTE);
	ip6->nexthdr = IPPROTO_ICMPV6;
	ip6->hop_limit = OUTER_TTL;
	__builtin_memcpy(&ip6->saddr, dst, 16);
	__builtin_memcpy(&ip6->daddr, src, 16);
	ic = (void *)(ip6 + 1);
	ic->icmp6_type = ICMPV6_PKT_TOOBIG;
	ic->icmp6_code = 0;
	ic->icmp6_cksum = 0;
	ic->icmp6_mtu = bpf_htonl(mtu);
	/* pseudo header: addresses, upper-layer length, next header */
	s = csum_words((__u16 *)&ip6->saddr, 16, 0);
	s += bpf_htons(8 + ICMP6_QUOTE) + bpf_htons(IPPROTO_ICMPV6);
	s = csum_words((__u16 *)ic, (8 + ICMP6_QUOTE) / 2, s);
	ic->icmp6_cksum = csum_fold(s);
	return 0;
}

#endif
