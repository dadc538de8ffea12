"""``popshift policy ...`` against the real Redis (overrides) and Kafka (show)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from popshift import redis_client
from popshift.credentials import KafkaAccess, RedisAccess
from services.policy_engine.cli import policy_main
from services.policy_engine.service import redis_overrides
from services.policy_engine.settings import PolicySettings


@pytest.fixture
def cli_settings(
    kafka: KafkaAccess, redis_access: RedisAccess, unique: str
) -> Iterator[PolicySettings]:
    s = PolicySettings(
        kafka_bootstrap=kafka.bootstrap,
        redis_url=redis_access.url,
        topic_prefix=unique,
        policy_overrides_key=f"{unique}:overrides",
    )
    yield s
    redis_client.connect(redis_access).delete(s.policy_overrides_key)


@pytest.mark.kafka
@pytest.mark.redis
def test_pin_forbid_drain_clear_and_show(
    cli_settings: PolicySettings, capsys: pytest.CaptureFixture[str]
) -> None:
    client = redis_client.connect(cli_settings.redis())
    assert policy_main(["pin", "a", "b", "20%", "--tier", "0"], cli_settings) == 0
    assert policy_main(["pin", "a", "b", "0.3", "--tier", "0"], cli_settings) == 0
    assert policy_main(["forbid", "b", "c"], cli_settings) == 0
    assert policy_main(["drain", "c"], cli_settings) == 0
    got = redis_overrides(client, cli_settings.policy_overrides_key)
    assert got.pinned == {(0, "a", "b"): 0.3}
    assert got.forbidden == {("b", "c")} and got.drain == ["c"]
    # An unknown PoP is refused and changes nothing.
    assert policy_main(["drain", "zzz"], cli_settings) == 2
    assert "unknown PoP" in capsys.readouterr().err
    assert redis_overrides(client, cli_settings.policy_overrides_key) == got
    assert policy_main(["clear", "c"], cli_settings) == 0
    got = redis_overrides(client, cli_settings.policy_overrides_key)
    assert got.forbidden == frozenset() and got.drain == [] and got.pinned
    capsys.readouterr()
    assert policy_main(["show", "--json"], cli_settings) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["policies"] == []
    assert shown["overrides"]["cli"]["pins"][0]["share"] == 0.3
    assert policy_main(["clear"], cli_settings) == 0
    assert redis_overrides(client, cli_settings.policy_overrides_key).pins == []
    client.close()
