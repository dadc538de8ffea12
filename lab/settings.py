"""What the scenario's services run with, built from their own settings classes.

The services read POPSHIFT_* environment variables, and their settings classes ignore names
they do not know, so a hand-written variable with a typo would silently keep its default.
The lab therefore never writes one by hand: `env()` takes a settings class and field values,
refuses a name the class lacks, lets the class validate the values, and only then turns them
into variables.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings

from popshift.settings import Settings
from services.analytics.app import AnalyticsSettings
from services.feedback_ingest.settings import IngestSettings
from services.forwarder.sync_settings import SyncSettings
from services.policy_engine.settings import PolicySettings
from services.table_writer.settings import TableWriterSettings

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NETWORK = REPO / "deploy" / "config" / "network.yaml"
ANALYTICS = HERE / "analytics.yaml"  # the default rules with lab timings
PREFIX = "po-"  # not the interactive lab's ps-: a scenario never tears down someone's lab
TABLE_BITS = 8
TIER = 0  # the loadgen's VIP is the first (bulk) tier: 30 ms bound, so a->c (45 ms) is out
DRAIN_PERIOD_S = 30.0  # longer than the late long connections live after any decrease
# Agents' heartbeat and ingest's pop-load interval: analytics' window (lab/analytics.yaml,
# 1.5 s) then averages 3 samples, as many as 1 s heartbeats in a 3 s window did, in half the time
HEARTBEAT_S = 0.5


def env(cls: type[BaseSettings], **values: Any) -> dict[str, str]:
    """The POPSHIFT_* variables that make `cls` read `values`; a wrong name or type fails here.

    Strings are written as they are, everything else as JSON (numbers, true/false, objects),
    which is how pydantic-settings parses them back.
    """
    unknown = sorted(set(values) - set(cls.model_fields))
    if unknown:
        raise ValueError(f"{cls.__name__} has no setting {', '.join(unknown)}")
    if none := sorted(k for k, v in values.items() if v is None):
        raise ValueError(f"{', '.join(none)}: None cannot be written as a variable; leave it out")
    checked = cls.model_validate(values).model_dump(mode="json", include=set(values))
    prefix = str(cls.model_config.get("env_prefix", ""))
    return {
        (prefix + name).upper(): v if isinstance(v, str) else json.dumps(v)
        for name, v in checked.items()
    }


def timings() -> dict[str, str]:
    """The lab's short timings (SCENARIOS.md), so that a run takes minutes, not tens of them."""
    return (
        # agents and ingest: two heartbeats a second (HEARTBEAT_S, the agents' interval), pop-load
        # every half second; a server is down after 3 s of silence, as with 1 s heartbeats
        env(
            IngestSettings,
            heartbeat_interval_s=HEARTBEAT_S,
            publish_interval_s=HEARTBEAT_S,
            missed_heartbeats=6,
        )
        | env(
            PolicySettings,
            # re-solve twice a second, big steps (a cancel within two hold-offs, 20 s: less
            # than the drain period the late long connections rely on), and a hold-off of
            # 10 s: on a loaded two-core machine the loads are noisy and a 4 s hold-off let a's
            # share change every few seconds; the share checks need stretches where it holds
            policy_tick_s=0.5,
            policy_holdoff_s=10.0,
            policy_max_step=0.5,
            # a wide dead-band: a share that holds still is what the precision check needs
            policy_deadband=0.08,
            policy_effect_lag_s=3.0,
            # the lab's short requests last well under a second, its long echo connections the
            # whole run: a share's reach (what it really moves) shows within 2 s
            policy_reach_after_s=2.0,
            # relief steps below 5 points are the estimate's noise (three nodes' counters a
            # second apart over a 1.5 s load window); without them the shares hold still and
            # the integral closes what the estimate misses, up to 30 % of capacity
            policy_relief_deadband=0.05,
            policy_max_boost=0.3,
            policy_status_max_age_s=10.0,
            # native demand: the production estimate from the forwarders' counters
        )
        | env(
            TableWriterSettings,
            # drained buckets keep their secondary longer than the late long connections live
            # (a drain shorter than a connection's life breaks it: by design)
            table_drain_period_s=DRAIN_PERIOD_S,
            table_tick_s=0.5,
            table_retain_s=30.0,
        )
        # forwarder syncs: notices first, Redis poll as the fallback, counters every second
        | env(SyncSettings, sync_poll_s=0.5, sync_stats_interval_s=1.0)
    )


def run_env(run_id: str, pin_root: Path, log_dir: Path) -> dict[str, str]:
    """Everything one run shares with its services: its own topics, consumer groups and Redis
    keys (so runs never read each other's data), the lab's table size, and the timings."""
    r = run_id
    return (
        env(
            Settings,
            topic_prefix=r,
            topic_partitions=1,
            table_bits=TABLE_BITS,
            network_file=str(NETWORK),
        )
        | env(IngestSettings, ingest_group=f"{r}-ingest")
        | env(
            AnalyticsSettings,
            analytics_app_id=f"{r}-analytics",
            analytics_config=str(ANALYTICS),
            analytics_datadir=str(log_dir / "analytics-data"),
        )
        | env(
            PolicySettings,
            policy_group=f"{r}-policy",
            policy_overrides_key=f"{r}:overrides",
            policy_leader_key=f"{r}:policy:leader",
        )
        | env(TableWriterSettings, table_group_prefix=f"{r}-table", table_key_prefix=f"{r}:table")
        | env(SyncSettings, sync_group_prefix=f"{r}-sync", sync_pin_dir=str(pin_root))
        | timings()
    )
