"""Policy event to BPF map: how long until a 65,536-bucket table change forwards packets.

Each round takes a policy event for PoP a that moves 10 % of tier 0's buckets (share to b
alternating 0.1 / 0.2), and times, on this machine and in one process:

1. table writer: the pure core's ``on_policy`` (new tables, diff, invariants);
2. Redis write: codec encode + the atomic Lua SET/flip (``TableStore.write``);
3. sync Redis read: MGET of the ``current`` keys + GET of the new blob;
4. decode + map image + diff (pure, vectorised);
5. map update: the loader's batch update of the changed buckets, a whole-table swap (written to
   the spare table, swapped in after one RCU grace period, written again to the old one).

The event arrives already validated (Kafka consume and the table-updates.v1 notice hop are not
included: on the local broker that hop is a few ms plus the producer's 5 ms linger). Needs root
(BPF maps) and the local Redis (started through deploy/local when not running).

    sudo .venv/bin/python bench/table_apply.py [--repeat 20] [--bits 16]

The last line is ``table_apply_p99_ms: N`` (end to end, 1 + 2 + sync).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from popshift.network import load_network
from schemas.messages import PolicyAction, PolicyEvent, PolicyReason, PopLoad, ServerLoad, Share
from services.forwarder.loader import DEFAULT_PIN_ROOT, Forwarder, Role, changed
from services.forwarder.sync import LoaderMaps, SyncService, map_image, redis_client
from services.forwarder.sync_settings import SyncSettings
from services.table_writer.codec import Header, decode_records
from services.table_writer.store import TableStore
from services.table_writer.writer import Write, commit, new_state, on_policy, on_servers

REPO = Path(__file__).resolve().parent.parent
TARGET_P99_MS = 250.0


def servers(n: int) -> PopLoad:
    loads = [
        # where the lab puts a's servers, inside its server_prefixes (else the writer refuses)
        ServerLoad(
            server=f"a-s{i}", address=f"10.100.1.{10 + i}", capacity_cores=8, utilisation=0.5
        )
        for i in range(1, n + 1)
    ]
    return PopLoad(
        pop="a", at=0.0, servers=loads, healthy_capacity_cores=8.0 * n, combined_load_cores=4.0
    )


def event(version: int, share: float) -> PolicyEvent:
    return PolicyEvent(
        action=PolicyAction.UPDATE,
        source="a",
        version=version,
        issued_at=float(version),
        shares=[Share(tier=0, destination="b", share=share)],
        reason=PolicyReason(trigger_pop="a", rule="bench"),
    )


def ms(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs) * 1000.0, q))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--bits", type=int, default=16, help="table size 2^N (compiled in)")
    parser.add_argument("--servers", type=int, default=8)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root for the BPF maps", file=sys.stderr)
        return 2
    subprocess.run(["bash", str(REPO / "deploy/local/redis-start.sh")], check=True, timeout=300)
    logging.basicConfig(level=logging.WARNING)

    unique = f"bench-{uuid.uuid4().hex[:8]}"
    # Its own keys under its own prefix: the benchmark logs in as the admin.
    settings = SyncSettings(table_key_prefix=f"{unique}:table", sync_kafka=False, principal="admin")
    client = redis_client(settings)
    store = TableStore(client, prefix=settings.table_key_prefix)
    root = DEFAULT_PIN_ROOT / f"b_{unique}"
    defines = None if args.bits == 16 else {"BUCKET_BITS": args.bits}
    fwd = Forwarder.open(Role.EDGE, "bench", pin_root=root, defines=defines)
    try:
        network = load_network(REPO / "deploy/config/network.yaml")
        state = new_state(network, "a", args.bits, drain_period_s=3600.0)
        now = time.time()  # written_at: a table older than the sync lease would be cut

        def write(writes: list[Write]) -> None:
            for w in writes:
                header = Header("a", w.tier, w.version, w.policy_version, args.bits, now, w.shares)
                store.write(w.table, header)
                commit(state, w)

        write(on_servers(state, servers(args.servers), now))
        sync = SyncService(settings, LoaderMaps(fwd), client, pop="a", node="bench")
        sync.sync()  # the first apply reads the maps back and writes every bucket

        parts: dict[str, list[float]] = {
            k: []
            for k in (
                "writer_on_policy",
                "redis_write",
                "sync_redis_read",
                "decode_image_diff",
                "map_update",
                "end_to_end",
            )
        }
        detail: dict[str, list[float]] = {"decode": [], "image": [], "diff": []}
        moved: list[int] = []
        warmup = 2
        for k in range(args.repeat + warmup):
            now += 1.0
            ev = event(k + 1, 0.1 if k % 2 == 0 else 0.2)
            t0 = time.perf_counter()
            writes = on_policy(state, ev, now)
            t1 = time.perf_counter()
            write(writes)
            t2 = time.perf_counter()
            assert sync.sync() == 1
            t3 = time.perf_counter()
            if k < warmup:
                continue
            tm = sync.timings
            parts["writer_on_policy"].append(t1 - t0)
            parts["redis_write"].append(t2 - t1)
            parts["decode_image_diff"].append(tm["decode_diff_s"])
            parts["map_update"].append(tm["map_write_s"])
            parts["sync_redis_read"].append(
                (t3 - t2) - tm["decode_diff_s"] - tm["map_write_s"] - tm["map_read_s"]
            )
            parts["end_to_end"].append(t3 - t0)
            moved.append(sum(len(w.changed) for w in writes))
            # The pure steps once more, apart, to show where decode_image_diff goes.
            raw = client.get(f"{settings.table_key_prefix}:a:0:v{state.tables[0].version}")
            assert raw is not None
            s0 = time.perf_counter()
            header, records = decode_records(raw)
            s1 = time.perf_counter()
            image = map_image(header, records)
            s2 = time.perf_counter()
            changed(image, image)
            s3 = time.perf_counter()
            detail["decode"].append(s1 - s0)
            detail["image"].append(s2 - s1)
            detail["diff"].append(s3 - s2)
        assert np.array_equal(LoaderMaps(fwd).read(0), image), "maps differ from Redis"

        size = 1 << args.bits
        print(
            f"machine: {platform.node()} {platform.machine()} cores={os.cpu_count()} "
            f"(note: a 2-core VM; writer, Redis and sync share it, in production the writer "
            f"and each node's sync run on different machines)"
        )
        print(
            f"table: {size} buckets, {np.mean(moved):.0f} changed per event "
            f"({100.0 * np.mean(moved) / size:.1f} %), {len(moved)} events after {warmup} warm-up"
        )
        print(f"{'part':<20} {'p50_ms':>8} {'p99_ms':>8}")
        for name, xs in parts.items():
            print(f"{name:<20} {ms(xs, 50):8.1f} {ms(xs, 99):8.1f}")
        print(
            "  decode_image_diff = decode {:.2f} + image {:.2f} + diff {:.2f} ms (p50)".format(
                ms(detail["decode"], 50), ms(detail["image"], 50), ms(detail["diff"], 50)
            )
        )
        sync_ms = [
            a + b + c
            for a, b, c in zip(
                parts["sync_redis_read"],
                parts["decode_image_diff"],
                parts["map_update"],
                strict=True,
            )
        ]
        print(
            f"sync only (Redis read to map updated): p50 {ms(sync_ms, 50):.1f} ms, "
            f"p99 {ms(sync_ms, 99):.1f} ms"
        )
        p99 = ms(parts["end_to_end"], 99)
        verdict = "met" if p99 <= TARGET_P99_MS else "NOT met"
        print(f"target p99 <= {TARGET_P99_MS:.0f} ms: {verdict}")
        print(f"table_apply_p99_ms: {p99:.0f}")
    finally:
        for key in client.scan_iter(f"{unique}:*"):
            client.delete(key)
        fwd.close()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
