"""``popshift policy ...`` against the real Redis (overrides) and Kafka (show, the audit trail)."""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator

import pytest

from popshift import redis_client, topics
from popshift.bus import create_topics
from popshift.credentials import KafkaAccess, RedisAccess
from schemas.messages import AuditOutcome
from services.policy_engine.audit import read_trail
from services.policy_engine.cli import policy_main
from services.policy_engine.service import redis_overrides
from services.policy_engine.settings import PolicySettings

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

WHY = ["--reason", "test"]


@pytest.fixture
def cli_settings(
    kafka: KafkaAccess, redis_access: RedisAccess, unique: str
) -> Iterator[PolicySettings]:
    s = PolicySettings(
        kafka_bootstrap=kafka.bootstrap,
        redis_url=redis_access.url,
        topic_prefix=unique,
        policy_overrides_key=f"{unique}:overrides",
        policy_audit_timeout_s=5.0,
    )
    create_topics(kafka, [s.topic(topics.POLICY_AUDIT)], partitions=1)
    yield s
    redis_client.connect(redis_access).delete(s.policy_overrides_key)


def test_pin_forbid_drain_clear_and_show(
    cli_settings: PolicySettings, capsys: pytest.CaptureFixture[str]
) -> None:
    client = redis_client.connect(cli_settings.redis())
    assert policy_main(["pin", "a", "b", "20%", "--tier", "0", *WHY], cli_settings) == 0
    assert policy_main(["pin", "a", "b", "0.3", "--tier", "0", *WHY], cli_settings) == 0
    assert policy_main(["forbid", "b", "c", *WHY], cli_settings) == 0
    assert policy_main(["drain", "c", *WHY], cli_settings) == 0
    got = redis_overrides(client, cli_settings.policy_overrides_key)
    assert got.pinned == {(0, "a", "b"): 0.3}
    assert got.forbidden == {("b", "c")} and got.drain == ["c"]
    # An unknown PoP is refused and changes nothing.
    assert policy_main(["drain", "zzz", *WHY], cli_settings) == 2
    assert "unknown PoP" in capsys.readouterr().err
    assert redis_overrides(client, cli_settings.policy_overrides_key) == got
    assert policy_main(["clear", "c", *WHY], cli_settings) == 0
    got = redis_overrides(client, cli_settings.policy_overrides_key)
    assert got.forbidden == frozenset() and got.drain == [] and got.pinned
    capsys.readouterr()
    assert policy_main(["show", "--json"], cli_settings) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["policies"] == []
    assert shown["overrides"]["cli"]["pins"][0]["share"] == 0.3
    assert policy_main(["clear", "--all", *WHY], cli_settings) == 0
    assert redis_overrides(client, cli_settings.policy_overrides_key).pins == []
    client.close()


def test_a_pin_is_audited_before_and_after_and_the_log_shows_it(
    cli_settings: PolicySettings, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["pin", "a", "b", "25%", "--tier", "0", "--reason", "a's rack 3 maintenance"]
    assert policy_main([*argv, "--by", "alice"], cli_settings) == 0
    assert policy_main(["drain", "c", "--reason", "c decommissioned"], cli_settings) == 0
    requested, applied, drained, _ = read_trail(cli_settings)
    assert requested.outcome is AuditOutcome.REQUESTED and applied.outcome is AuditOutcome.APPLIED
    assert requested.id == applied.id != drained.id
    assert requested.at <= applied.at
    assert (applied.by, applied.reason, applied.action) == ("alice", argv[-1], "pin")
    assert applied.os_user and applied.host and applied.pid > 0
    assert applied.arguments == {"source": "a", "destination": "b", "tier": 0, "share": 0.25}
    assert applied.pops == ["a", "b"] and applied.before is None
    assert [(c.change, c.kind, c.share_after) for c in applied.changes] == [("added", "pin", 0.25)]
    assert drained.by == getpass.getuser()  # --by defaults to the OS user
    assert json.loads(drained.before or "")["pins"][0]["share"] == 0.25

    capsys.readouterr()
    assert policy_main(["log"], cli_settings) == 0
    out = capsys.readouterr().out
    assert "applied   pin" in out and "by alice" in out and "why: a's rack 3 maintenance" in out
    assert "+ pin a->b tier 0 25.0%" in out and "4 of 4 record(s)" in out
    assert policy_main(["log", "--pop", "a", "--limit", "1", "--json"], cli_settings) == 0
    (only,) = json.loads(capsys.readouterr().out)
    assert (only["outcome"], only["id"]) == ("applied", applied.id)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["pin", "a", "b", "0.2", "--tier", "2"], "tier 2 (premium) may not be forwarded"),
        (["pin", "a", "c", "0.2", "--tier", "1"], "a->c is 45 ms, tier 1 (standard) allows 15 ms"),
    ],
)
def test_a_pin_against_its_tier_rules_writes_nothing_to_redis(
    cli_settings: PolicySettings, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    assert policy_main([*argv, *WHY], cli_settings) == 2
    assert says in capsys.readouterr().err
    assert redis_client.connect(cli_settings.redis()).get(cli_settings.policy_overrides_key) is None
    (refused,) = read_trail(cli_settings)
    assert refused.outcome is AuditOutcome.REFUSED and says in (refused.error or "")


@pytest.mark.parametrize(
    "argv",
    [
        ["clear", *WHY],  # no PoP and no --all
        ["clear", "a", "--all", *WHY],
        ["pin", "a", "b", "0.2", "--tier", "0"],  # no reason
        ["drain", "a", "--reason", " "],
    ],
)
def test_a_change_without_a_reason_or_a_clear_without_a_pop_is_an_error(
    cli_settings: PolicySettings, argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        policy_main(argv, cli_settings)
    assert info.value.code == 2
    assert read_trail(cli_settings) == []


@pytest.mark.parametrize("where", ["no topic", "no broker"])
def test_no_audit_trail_no_change(
    cli_settings: PolicySettings, capsys: pytest.CaptureFixture[str], unique: str, where: str
) -> None:
    if where == "no topic":
        settings = cli_settings.model_copy(update={"topic_prefix": f"{unique}-none"})
    else:
        settings = cli_settings.model_copy(
            update={"kafka_bootstrap": "127.0.0.1:1", "policy_audit_timeout_s": 1.0}
        )
    assert policy_main(["drain", "a", *WHY], settings) == 1
    assert "audit trail is unavailable, nothing changed" in capsys.readouterr().err
    assert redis_client.connect(settings.redis()).get(settings.policy_overrides_key) is None
