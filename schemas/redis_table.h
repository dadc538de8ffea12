/* popshift: one table version in Redis, as C sees it (schemas/redis-table.md).
 *
 * No program reads Redis in C; this header exists so that tests/table/test_table.py can
 * compile it and prove that services/table_writer/codec.py and the page agree byte by byte,
 * and so that the record's flag byte is visibly the BPF bucket's enum popshift_flags.
 * Every multi-byte field is little-endian.
 */
#ifndef POPSHIFT_REDIS_TABLE_H
#define POPSHIFT_REDIS_TABLE_H

#include <linux/types.h>
#include "consts.h"             /* enum popshift_flags (services/forwarder/bpf/) */

#define TABLE_MAGIC "PSTB"
#define TABLE_FORMAT 2
#define TABLE_NO_ADDRESS 0xffff

/* The start of the blob; `header_len` bytes of UTF-8 JSON follow, then 2^bits records. */
struct table_prefix {
	char magic[4];          /* TABLE_MAGIC, no terminating zero */
	__u16 format;           /* TABLE_FORMAT */
	__u32 header_len;
} __attribute__((packed));

/* One bucket. */
struct table_record {
	__u16 primary;          /* index into the header's addresses */
	__u16 secondary;        /* index into the header's addresses, TABLE_NO_ADDRESS = none */
	__u16 secondary_pop;    /* PoP id of an inter-PoP secondary, else 0 */
	__u8 flags;             /* enum popshift_flags: FLAG_VALID | HAS_SECONDARY | INTER_POP | AWAY */
	__u8 pad;               /* 0 */
	double modified_at;     /* seconds since the epoch when the bucket last changed */
};

#endif
