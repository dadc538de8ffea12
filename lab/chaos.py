"""Chaos: the overload scenario while the control plane's processes and dependencies fail in turn.

PoP a is overloaded and forwards to b (and b to c) when the first fault is injected; the load
stays on throughout. Each fault in turn: kill -9 of the policy engine, of each table writer,
of analytics, of ingest, of each forwarder sync (the supervisor starts a killed service again
after `RESTART_S`, as systemd's Restart=always would); Kafka stopped for `KAFKA_DOWN_S`; Redis
restarted empty; a second policy engine beside the first. Then the engine is killed for good,
and every PoP must fall back to local processing within its leases.

Per fault it measures, from the run's record and the processes:

- broken long-lived connections (their own, opened just before the fault, and any of the
  region traffic's that failed meanwhile) and failed new connections;
- seconds until the control plane is back where it was: every service up, a pop-status of every
  PoP and a renewed table of every PoP newer than the fault, and the same policies (the latest
  policies.v1 event per source), the same tables in Redis and the same edge maps (buckets away
  per destination) as before it. Measured from the kill for a killed process, from the
  dependency's return for an outage;
- whether forwarding went on during the fault: new connections of region a processed in b,
  inter-PoP forwards of a's servers and receptions of b's servers rising;
- services that exited without being killed (a bug: the supervisor hides it otherwise).

The engine's hold-off is long in this run (`HOLDOFF_S`) so that the policy holds still once
reached: any policy change after that is a fault's doing, not the engine's ordinary work.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from lab import checks
from lab.app.results import Kind, Outcome
from lab.harness import Harness
from lab.observer import node_counters
from lab.record import Result, share_changes
from lab.settings import REPO, TIER, env
from popshift import redis_client
from popshift.settings import Settings
from schemas.bucket import Flag
from services.policy_engine.settings import PolicySettings
from services.table_writer.codec import decode_records
from services.table_writer.settings import TableWriterSettings
from services.table_writer.store import current_key, version_key

RESTART_S = 2.0  # the process manager's restart delay (systemd RestartSec=)
KAFKA_DOWN_S = 30.0  # the Kafka outage
HOLDOFF_S = 900.0  # longer than the run: once reached, the policy holds still
RECOVERY_TIMEOUT_S = 60.0  # a fault not recovered by then is reported as not recovered
MAX_RECOVERY_S = 30.0  # the promise: every fault is back to the same policy, tables, maps by then
SETTLE_S = 2.0  # after recovery, before the fault's own connections are closed
MAX_LOCAL_S = 1.0  # a's maps may read "nothing away" this long (one sample) during a fault
PROBE_LONGS = 4  # long connections opened in region a just before each fault
SETTLE_QUIET_S = 8.0  # the baseline: no share changed this long...
STEADY_UTIL = 0.08  # ...and no PoP's utilisation moved by more than this over that time


def chaos_env() -> dict[str, str]:
    """The run's settings on top of the scenario's: a hold-off longer than the run, no relief
    that bypasses it (a relief dead-band no share can cross), and neither integral action nor a
    measured reach (a stays over its target by design here; the integral's growing boost moved
    the solver's answer for b's cascade until it crossed the dead-band mid-run, a new policy no
    fault made, and a reach measured mid-run would do the same): once a forwards, any change
    of a policy is a fault's doing."""
    return env(
        PolicySettings,
        policy_holdoff_s=HOLDOFF_S,
        policy_relief_deadband=1.0,
        policy_integral_gain=0.0,
        policy_reach_after_s=HOLDOFF_S,  # held still that long: never within the run
    )


Picture = dict[str, Any]
"""What the control plane holds: policies, Redis tables and edge maps, per PoP."""


@dataclass
class Fault:
    name: str
    injected: float = 0.0  # t of the injection
    ended: float = 0.0  # t the fault was over (process killed, dependency back)
    recovered: float | None = None
    broken: int = 0  # long-lived connections that failed in the fault's window
    longs: int = 0  # long-lived connections open across it (its own + the regions')
    new_failed: int = 0
    new_total: int = 0
    moved: int = 0  # new connections of region a processed in b during the fault
    fwd_inter: int = 0  # packets a's servers sent to another PoP during it
    received_peer: int = 0  # packets b's servers received from another PoP during it
    local_s: float = 0.0  # longest stretch in it with a's edge maps sending nothing away
    policy_changes: int = 0  # policy events during it that changed a source's shares
    exits: list[str] = field(default_factory=list)  # services that exited unkilled
    detail: str = ""

    @property
    def recovery_s(self) -> float | None:
        return None if self.recovered is None else round(self.recovered - self.ended, 2)

    @property
    def forwarding(self) -> bool:
        """New connections kept going where the tables said, without a stretch in local."""
        return (
            self.moved > 0 and self.fwd_inter > 0 and self.received_peer > 0
            and self.local_s < MAX_LOCAL_S
        )  # fmt: skip

    @property
    def ok(self) -> bool:
        return (
            self.recovery_s is not None
            and self.recovery_s <= MAX_RECOVERY_S
            and self.broken == 0
            and self.forwarding
            and not self.exits
        )


@dataclass
class LeaseRun:
    """The engine killed for good: every PoP's edge maps back to local within the leases."""

    killed: float = 0.0
    local: float | None = None
    bound_s: float = 0.0  # the documented time: policy lease (if any) + table lease
    broken: int = 0

    @property
    def local_s(self) -> float | None:
        return None if self.local is None else round(self.local - self.killed, 2)

    @property
    def ok(self) -> bool:
        return self.local_s is not None and self.local_s <= self.bound_s and self.broken == 0


@dataclass
class ChaosResult:
    faults: list[Fault]
    lease: LeaseRun
    broken_total: int
    longs_total: int
    placement: checks.Check

    @property
    def max_recovery_s(self) -> float:
        return max((f.recovery_s or float("inf") for f in self.faults), default=0.0)


class Chaos:
    """The faults, told on an open harness (built with `chaos_env()`)."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        s = Settings()
        self.redis = s.redis()
        self.key_prefix = f"{h.run_id}:table"
        self.faults: list[Fault] = []
        self._known_restarts = 0
        self._killed: set[str] = set()

    # -- what the control plane holds --------------------------------------------------------

    def _tables(self) -> tuple[dict[str, dict[str, int]], dict[str, float]] | None:
        """Per PoP: buckets away per destination in Redis's current table, and its written_at;
        None while Redis does not answer or a PoP has no table."""
        names = {p.id: p.name for p in self.h.topo.pops}
        client = redis_client.connect(self.redis, 1.0)
        try:
            away: dict[str, dict[str, int]] = {}
            written: dict[str, float] = {}
            for pop in self.h.topo.pops:
                version = client.get(current_key(pop.name, TIER, self.key_prefix))
                if version is None:
                    return None
                blob = client.get(version_key(pop.name, TIER, int(version), self.key_prefix))
                if blob is None:
                    return None
                header, records = decode_records(blob)
                flags = records["flags"]
                is_away = (flags & int(Flag.AWAY)) != 0
                dests = [names.get(int(d), str(d)) for d in records["secondary_pop"][is_away]]
                away[pop.name] = {d: dests.count(d) for d in sorted(set(dests))}
                written[pop.name] = header.written_at - self.h.result.epoch
            return away, written
        except redis.RedisError:
            return None
        finally:
            client.close()

    def picture(self) -> Picture:
        obs = self.h.observer
        assert obs is not None
        with obs.lock:
            policies = {
                src: {s.destination: round(s.share, 6) for s in ev.shares if s.tier == TIER}
                for src, ev in obs.policy.items()
            }
        tables = self._tables()
        maps = {p: dict(sorted(d.items())) for p, d in obs.latest().away.items()}
        return {"policies": policies, "tables": tables[0] if tables else None, "maps": maps}

    def _fresh(self, since: float) -> bool:
        """Every PoP has a pop-status and a table renewal newer than `since`."""
        obs = self.h.observer
        assert obs is not None
        with obs.lock:
            status = {p: st.at - self.h.result.epoch for p, st in obs.status.items()}
        tables = self._tables()
        return (
            tables is not None
            and all(status.get(p, -1.0) > since for p in self.h.result.pops)
            and all(w > since for w in tables[1].values())
        )

    def _all_running(self) -> bool:
        return all(self.h.services.running(n) for n in list(self.h.services.specs))

    # -- one fault -------------------------------------------------------------------------

    def _counters(self) -> dict[str, dict[str, int]]:
        return node_counters(self.h.topo)

    def run_fault(
        self, name: str, baseline: Picture, inject: Callable[[Fault], None], killed: str = ""
    ) -> Fault:
        """Open the fault's own long connections, inject, wait until the picture is
        `baseline` again with fresh statuses and tables, settle, and judge the window."""
        h = self.h
        f = Fault(name)
        probe = f"probe-{len(self.faults)}"
        h.start_traffic(probe, "a", 0.0, PROBE_LONGS, "probe")
        h.sleep(1.5)
        before = self._counters()
        f.injected = h.t()
        if killed:
            self._killed.add(killed)
        inject(f)
        if not f.ended:
            f.ended = f.injected
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._all_running() and self._fresh(f.ended) and self.picture() == baseline:
                f.recovered = h.t()
                break
            h.progress()
            time.sleep(0.2)
        if f.recovered is None:
            f.detail = f"not back after {RECOVERY_TIMEOUT_S:.0f}s: now {self.picture()}"
        h.sleep(SETTLE_S)
        end = h.t()
        after = self._counters()
        h.stop_traffic(probe)
        self._judge(f, end, before, after)
        self.faults.append(f)
        rec = "NOT recovered" if f.recovery_s is None else f"back in {f.recovery_s:.1f}s"
        h.log(f"t={h.t():.0f}s {f.name}: {rec}, {f.broken} long-lived connections broken"
              f"{', unkilled exits ' + str(f.exits) if f.exits else ''}")  # fmt: skip
        return f

    def _judge(
        self, f: Fault, end: float, before: dict[str, dict[str, int]],
        after: dict[str, dict[str, int]],
    ) -> None:  # fmt: skip
        h = self.h
        r = h.result
        probe_longs = [
            t for t in r.traffic if t.tag == "probe" and t.record.kind is Kind.LONG
            and f.injected - 3.0 <= t.record.start < f.injected
        ]  # fmt: skip
        failed_longs = [
            t for t in r.traffic if t.record.kind is Kind.LONG
            and t.record.outcome is not Outcome.OK
            and f.injected <= t.record.start + t.record.duration_s <= end
        ]  # fmt: skip
        f.longs = len(probe_longs) + sum(h.plan.longs.values())
        f.broken = len(failed_longs)
        # the region traffic's records arrive when it stops: count its shorts at the end
        f.new_total = f.new_failed = f.moved = 0
        a = h.topo.pop("a")
        b = h.topo.pop("b")
        f.fwd_inter = sum(
            after[s]["fwd_inter"] + after[s]["second_chance_inter"]
            - before[s]["fwd_inter"] - before[s]["second_chance_inter"]
            for s in a.servers
        )  # fmt: skip
        f.received_peer = sum(after[s]["received_peer"] - before[s]["received_peer"]
                              for s in b.servers)  # fmt: skip
        f.local_s = local_stretch(r, "a", f.injected, end)
        assert h.observer is not None
        with h.observer.lock:
            events = [p for p in r.policies if f.injected <= p.t <= end]
        f.policy_changes = sum(
            1 for p in events if p.shares != policy_before(r, p.source, f.injected)
        )
        restarts = h.services.restarts[self._known_restarts :]
        self._known_restarts = len(h.services.restarts)
        f.exits = sorted({x.name for x in restarts if x.name not in self._killed})
        self._killed.clear()

    # -- the faults ------------------------------------------------------------------------

    def kill(self, name: str, baseline: Picture) -> Fault:
        def inject(f: Fault) -> None:
            self.h.services.kill(name)

        return self.run_fault(f"kill -9 {name}", baseline, inject, killed=name)

    def kafka_outage(self, baseline: Picture, down_s: float = KAFKA_DOWN_S) -> Fault:
        def inject(f: Fault) -> None:
            local(["bash", "deploy/local/kafka-stop.sh"])
            self.h.sleep(down_s)
            local(["bash", "deploy/local/kafka-start.sh"])
            f.ended = self.h.t()

        return self.run_fault(f"Kafka stopped {down_s:.0f}s", baseline, inject)

    def redis_wipe(self, baseline: Picture) -> Fault:
        def inject(f: Fault) -> None:
            local(["bash", "deploy/local/redis-stop.sh", "--wipe"])
            local(["bash", "deploy/local/redis-start.sh"])
            f.ended = self.h.t()

        return self.run_fault("Redis restarted empty", baseline, inject)

    def second_engine(self, baseline: Picture, window_s: float = 10.0) -> Fault:
        """A second engine beside the first for `window_s`, then stopped again."""

        def inject(f: Fault) -> None:
            self.h.services.spawn("policy-engine-2", "services.policy_engine.service")
            self.h.sleep(window_s)
            self.h.services.retire("policy-engine-2")
            f.ended = self.h.t()

        return self.run_fault("a second policy engine", baseline, inject, "policy-engine-2")

    def engine_gone(self) -> LeaseRun:
        """The engine killed for good: time until no edge sends a new connection away."""
        h = self.h
        run = LeaseRun(bound_s=lease_bound_s())
        h.start_traffic("probe-lease", "a", 0.0, PROBE_LONGS, "probe")
        h.sleep(1.5)
        run.killed = h.t()
        h.services.retire("policy-engine", sig=signal.SIGKILL)
        deadline = time.monotonic() + run.bound_s + 15.0
        while time.monotonic() < deadline:
            if all(h.maps_away(p.name) == 0 for p in h.topo.pops):
                run.local = h.t()
                break
            h.progress()
            time.sleep(0.2)
        h.sleep(SETTLE_S)
        end = h.t()
        h.stop_traffic("probe-lease")
        run.broken = sum(
            1 for t in h.result.traffic if t.record.kind is Kind.LONG
            and t.record.outcome is not Outcome.OK
            and run.killed <= t.record.start + t.record.duration_s <= end
        )  # fmt: skip
        h.log(format_lease(run))
        return run


def local_stretch(result: Result, pop: str, t0: float, t1: float) -> float:
    """The longest stretch in [t0, t1] over which `pop`'s edge maps sent no bucket away."""
    longest = 0.0
    since: float | None = None
    for s in result.samples:
        if not t0 <= s.t <= t1:
            continue
        if sum(s.away.get(pop, {}).values()) == 0:
            since = s.t if since is None else since
            longest = max(longest, s.t - since)
        else:
            since = None
    return round(longest, 1)


def policy_before(result: Result, source: str, at: float) -> dict[str, float]:
    shares: dict[str, float] = {}
    for p in result.policies:
        if p.source == source and p.t < at:
            shares = p.shares
    return shares


def lease_bound_s() -> float:
    """The documented time for every PoP to go local once the engine is gone while the bus and
    the writers live (docs/failure.md#policy-leases): the policy lease, a writer tick, then a
    sync poll and an observer sample."""
    lease = PolicySettings().policy_lease_s
    return lease + TableWriterSettings().table_tick_s + 2.0


def local(cmd: list[str]) -> None:
    """A deploy/local script (stop or start Kafka or Redis)."""
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.stdout.strip()}")


def format_fault(f: Fault) -> str:
    rec = "NOT recovered" if f.recovery_s is None else f"back in {f.recovery_s:.1f}s"
    fwd = "yes" if f.forwarding else "NO"
    exits = f" unkilled exits {f.exits}" if f.exits else ""
    return (
        f"  {f.name:32} broken {f.broken}/{f.longs} long, new failed {f.new_failed}/"
        f"{f.new_total}, {rec}, forwarding went on: {fwd} (a->b new {f.moved}, a fwd_inter "
        f"+{f.fwd_inter}, b received_peer +{f.received_peer}, a local for {f.local_s:.1f}s), "
        f"policy changes "
        f"{f.policy_changes}{exits}{' ' + f.detail if f.detail else ''}"
    )


def format_lease(run: LeaseRun) -> str:
    got = "NOT local" if run.local_s is None else f"local in {run.local_s:.1f}s"
    return (
        f"  {'engine killed for good':32} every PoP {got} (bound {run.bound_s:.0f}s: policy "
        f"lease {PolicySettings().policy_lease_s:.0f}s + a writer tick + a poll), "
        f"broken {run.broken}"
    )


def count_shorts(h: Harness, faults: list[Fault]) -> None:
    """Once the region traffic stopped: new connections per fault window (failed, and those
    of region a processed in b)."""
    for f in faults:
        end = (f.recovered or f.ended) + SETTLE_S
        for t in h.result.traffic:
            r = t.record
            if t.tag != "main" or r.kind is not Kind.SHORT or not f.injected <= r.start < end:
                continue
            f.new_total += 1
            f.new_failed += r.outcome is not Outcome.OK
            f.moved += t.region == "a" and r.pop == "b" and r.outcome is Outcome.OK


def run(h: Harness, syncs: list[str] | None = None, kafka_down_s: float = KAFKA_DOWN_S) -> (
        ChaosResult):  # fmt: skip
    """The whole chaos story on an open harness; `syncs` limits which syncs are killed."""
    plan = h.plan
    h.services.keep_alive(RESTART_S)
    for pop in h.topo.pops:
        rate, longs = plan.rates.get(pop.name, 0.0), plan.longs.get(pop.name, 0)
        h.start_traffic(f"region-{pop.name}", pop.name, rate, longs, "main")
    h.wait("a's table read", lambda: any(x.pop == "a" for x in h.result.tables), 30.0)
    h.sleep(4.0)
    h.counters("load_on")
    h.mark("load_on")
    h.set_load(True)
    h.wait("a's policy", lambda: bool(h.forwarding("a")), 90.0)
    h.wait("a's maps", lambda: h.maps_away("a") > 0, 30.0)
    chaos = Chaos(h)

    def settled() -> bool:
        """No share changed for a while and the loads have followed the last change: a relay's
        load still rising as a's forwarded connections arrive would make the engine decide the
        relay's own cascade a little later, a change no fault made (a restarted engine, whose
        estimates start afresh, decides it at once)."""
        assert h.observer is not None
        since = h.t() - SETTLE_QUIET_S
        with h.observer.lock:
            quiet = all(p.t < since for p in share_changes(h.result))
            utils = [(s.pop, s.util) for s in h.result.statuses if s.t >= since]
        steady = all(
            len(u) >= 3 and max(u) - min(u) <= STEADY_UTIL
            for u in ([x for p, x in utils if p == pop.name] for pop in h.topo.pops)
        )
        return quiet and steady and chaos.picture()["tables"] is not None

    h.wait("a policy that holds still, loads that follow it", settled, 150.0)
    baseline = chaos.picture()
    h.log(f"t={h.t():.0f}s baseline: policies {baseline['policies']}, maps {baseline['maps']}")
    h.mark("chaos_on")
    names = ["policy-engine", *(f"table-writer-{p.name}" for p in h.topo.pops), "analytics",
             "ingest"]  # fmt: skip
    nodes = [n for p in h.topo.pops for n in (p.edge, *p.servers)]
    names += [f"sync-{n}" for n in (nodes if syncs is None else syncs)]
    for name in names:
        chaos.kill(name, baseline)
    chaos.kafka_outage(baseline, kafka_down_s)
    chaos.redis_wipe(baseline)
    chaos.second_engine(baseline)
    lease = chaos.engine_gone()
    h.mark("chaos_off")
    for name in list(h.traffic):
        h.stop_traffic(name)
    h.counters("end")
    h.mark("end")
    count_shorts(h, chaos.faults)
    every_long = [t for t in h.result.traffic if t.record.kind is Kind.LONG]
    broken = sum(1 for t in every_long if t.record.outcome is not Outcome.OK)
    placement = checks.check_placement(h.result, h.result.marks["load_on"], h.result.marks["end"])
    return ChaosResult(chaos.faults, lease, broken, len(every_long), placement)
