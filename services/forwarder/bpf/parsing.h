/* popshift forwarder: Ethernet / IPv4 / IPv6 / TCP / UDP / GUE parsing.
 *
 * Results: OK, MALFORMED (truncated or inconsistent: dropped and counted), UNSUPPORTED (a valid
 * IP packet whose L4 we do not steer: fragments, IPv6 extension headers, ICMP, other protocols),
 * GUE_BAD (a GUE header we did not write). model.py parses with the same rules.
 */
#ifndef POPSHIFT_PARSING_H
#define POPSHIFT_PARSING_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include "consts.h"
#include "structs.h"

#define MAX_L3_OFF 160           /* outer headers never put the inner L3 header further */
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

/* Make clang keep using the bounds-checked register instead of re-deriving data + off. */
#define barrier_ptr(p) asm volatile("" : "+r"(p))

enum parse_result {
	PARSE_OK = 0,
	PARSE_MALFORMED,
	PARSE_UNSUPPORTED,
	PARSE_GUE_BAD,
	PARSE_NOT_IP,
};

/* What the programs need of one IP packet; offsets count from ctx->data. */
struct packet {
	__u8 src[16];
	__u8 dst[16];
	__be16 sport;
	__be16 dport;
	__u16 l3_off;
	__u16 l4_off;
	__u16 l3_len;            /* bytes from the L3 header to the end of the frame */
	__u8 v6;
	__u8 proto;
	__u8 tcp_flags;
	__u8 tos;
	__u8 df;                 /* IPv4 don't-fragment */
	__u8 options;            /* IPv4 header longer than 20 bytes */
	__u8 frag;               /* IPv4 fragment (any offset or MF) */
};

static __always_inline void map4(__u8 *dst, __be32 a)
{
	__u32 *w = (__u32 *)dst;

	w[0] = 0;
	w[1] = 0;
	w[2] = bpf_htonl(0xffff);
	w[3] = a;
}

static __always_inline int is_mapped4(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;

	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff);
}

static __always_inline int addr_eq(const __u8 *a, const __u8 *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;

	return x[0] == y[0] && x[1] == y[1];
}

static __always_inline int parse_l3(void *data, void *data_end, __u32 pkt_len, __u32 off, int v6,
				    struct packet *p)
{
	__u32 avail;

	if (off > MAX_L3_OFF || off > pkt_len)
		return PARSE_MALFORMED;
	avail = pkt_len - off;
	p->l3_off = off;
	p->l3_len = avail;
	p->v6 = v6;
	if (!v6) {
		struct iphdr *ip = data + off;
		__u32 hl, tot;
		__u16 frag_off;

		if ((void *)(ip + 1) > data_end)
			return PARSE_MALFORMED;
		if (ip->version != 4 || ip->ihl < 5)
			return PARSE_MALFORMED;
		hl = ip->ihl * 4;
		tot = bpf_ntohs(ip->tot_len);
		if (tot < hl || tot > avail)
			return PARSE_MALFORMED;
		frag_off = bpf_ntohs(ip->frag_off);
		p->df = !!(frag_off & 0x4000);
		p->frag = !!(frag_off & 0x3fff);
		p->options = hl > 20;
		p->proto = ip->protocol;
		p->tos = ip->tos;
		p->l4_off = off + hl;
		map4(p->src, ip->saddr);
		map4(p->dst, ip->daddr);
	} else {
		struct ipv6hdr *ip6 = data + off;

		if ((void *)(ip6 + 1) > data_end)
			return PARSE_MALFORMED;
		if (ip6->version != 6 || 40 + (__u32)bpf_ntohs(ip6->payload_len) > avail)
			return PARSE_MALFORMED;
		p->proto = ip6->nexthdr;
		p->tos = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
		p->l4_off = off + 40;
		__builtin_memcpy(p->src, &ip6->saddr, 16);
		__builtin_memcpy(p->dst, &ip6->daddr, 16);
	}
	return PARSE_OK;
}

/* The first step of every program: Ethernet, then the outer IPv4/IPv6 header. PARSE_NOT_IP for
 * a frame we do not handle (ARP, VLAN, ...); the frame's destination MAC is our ingress MAC,
 * which a transmitted packet needs as its source.
 */
static __always_inline int parse_frame(void *data, void *data_end, __u32 pkt_len,
				       struct packet *p, __u8 *ingress_mac, int *v6)
{
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return PARSE_MALFORMED;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		*v6 = 0;
	else if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		*v6 = 1;
	else
		return PARSE_NOT_IP;
	__builtin_memcpy(ingress_mac, eth->h_dest, ETH_ALEN);
	return parse_l3(data, data_end, pkt_len, ETH_HLEN, *v6, p);
}

static __always_inline int parse_l4(void *data, void *data_end, __u32 pkt_len, struct packet *p)
{
	__u32 off = p->l4_off;

	if (p->frag)
		return PARSE_UNSUPPORTED;
	if (off > MAX_L3_OFF + 60)
		return PARSE_MALFORMED;
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *th = data + off;
		struct tcphdr tcp;

		barrier_ptr(th);
		if ((void *)(th + 1) > data_end)
			return PARSE_MALFORMED;
		__builtin_memcpy(&tcp, th, sizeof(tcp));
		p->sport = tcp.source;
		p->dport = tcp.dest;
		p->tcp_flags = ((__u8 *)&tcp)[13];
		if (tcp.doff < 5 || off + tcp.doff * 4 > pkt_len)
			return PARSE_MALFORMED;
		return PARSE_OK;
	}
	if (p->proto == IPPROTO_UDP) {
		struct udphdr *uh = data + off;
		struct udphdr udp;

		barrier_ptr(uh);
		if ((void *)(uh + 1) > data_end)
			return PARSE_MALFORMED;
		__builtin_memcpy(&udp, uh, sizeof(udp));
		p->sport = udp.source;
		p->dport = udp.dest;
		return PARSE_OK;
	}
	return PARSE_UNSUPPORTED;
}

/* Validate the GUE header after the outer UDP header, then parse the inner packet. */
static __always_inline int parse_gue(void *data, void *data_end, __u32 pkt_len,
				     const struct packet *outer, struct gue_hdr *g, struct packet *in)
{
	__u32 off = outer->l4_off + sizeof(struct udphdr);
	struct gue_hdr *gh;
	int v6, rc;

	if (off > MAX_L3_OFF)
		return PARSE_MALFORMED;
	gh = data + off;
	if ((void *)(gh + 1) > data_end)
		return PARSE_MALFORMED;
	__builtin_memcpy(g, gh, sizeof(*g));
	if (g->ver_c_hlen != GUE_HLEN_WORDS || g->flags != 0 ||
	    g->priv_version != GUE_PRIV_VERSION || (g->priv_flags & ~GUE_FLAGS_MASK) ||
	    g->hop_count > MAX_HOPS || g->hop_index > g->hop_count || g->tier >= TIERS ||
	    ((g->priv_flags & FLAG_FROM_PEER) && (g->priv_flags & FLAG_INTER_POP)))
		return PARSE_GUE_BAD;
	if (g->proto == IPPROTO_IPIP)
		v6 = 0;
	else if (g->proto == IPPROTO_IPV6)
		v6 = 1;
	else
		return PARSE_GUE_BAD;
	rc = parse_l3(data, data_end, pkt_len, off + GUE_LEN, v6, in);
	if (rc != PARSE_OK)
		return rc;
	return parse_l4(data, data_end, pkt_len, in);
}

#endif
