// SPDX-License-Identifier: GPL-2.0
/* Trivial programs: the benchmark's cost floor (XDP_TX) and a pass program that gives a veth
 * peer the NAPI context XDP_TX / XDP_REDIRECT into it needs (docs/packet-path.md, kernel notes).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int popshift_xdp_tx(struct xdp_md *ctx)
{
	return XDP_TX;
}

SEC("xdp")
int popshift_xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
