/* popshift forwarder: flow hash (Linux jhash2 over the 10 words of struct flow_key).
 *
 * The bucket index is the low BUCKET_BITS of the hash, the GUE UDP source port its top bits,
 * the outer IPv6 flow label its low 20 bits. model.py implements the same function.
 */
#ifndef POPSHIFT_HASHING_H
#define POPSHIFT_HASHING_H

#include "structs.h"

#define rol32(w, s) (((w) << (s)) | ((w) >> (32 - (s))))
#define jhash_mix(a, b, c)                     \
	{                                      \
		a -= c; a ^= rol32(c, 4); c += b;  \
		b -= a; b ^= rol32(a, 6); a += c;  \
		c -= b; c ^= rol32(b, 8); b += a;  \
		a -= c; a ^= rol32(c, 16); c += b; \
		b -= a; b ^= rol32(a, 19); a += c; \
		c -= b; c ^= rol32(b, 4); b += a;  \
	}
#define jhash_final(a, b, c)                \
	{                                   \
		c ^= b; c -= rol32(b, 14);  \
		a ^= c; a -= rol32(c, 11);  \
		b ^= a; b -= rol32(a, 25);  \
		c ^= b; c -= rol32(b, 16);  \
		a ^= c; a -= rol32(c, 4);   \
		b ^= a; b -= rol32(a, 14);  \
		c ^= b; c -= rol32(b, 24);  \
	}

static __always_inline __u32 flow_hash(const struct flow_key *key)
{
	const __u32 *k = (const __u32 *)key;
	__u32 a, b, c;

	a = b = c = 0xdeadbeef + (10 << 2) + HASH_SEED;
	a += k[0]; b += k[1]; c += k[2];
	jhash_mix(a, b, c);
	a += k[3]; b += k[4]; c += k[5];
	jhash_mix(a, b, c);
	a += k[6]; b += k[7]; c += k[8];
	jhash_mix(a, b, c);
	a += k[9];
	jhash_final(a, b, c);
	return c;
}

#endif
