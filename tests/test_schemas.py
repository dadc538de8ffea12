"""Strict validation of every message, and the committed JSON Schema files."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from schemas import messages as m
from schemas.generate import JSON_DIR, render_all
from tests.samples import ALL_SAMPLES, HEARTBEAT, POLICY, POP_LOAD


def _with(model: BaseModel, **changes: Any) -> dict[str, Any]:
    data = json.loads(model.model_dump_json())
    data.update(changes)
    return data


def _error_text(model: type[BaseModel], data: dict[str, Any] | str) -> str:
    with pytest.raises(ValidationError) as info:
        if isinstance(data, str):
            model.model_validate_json(data)
        else:
            model.model_validate(data)
    return str(info.value)


def test_every_model_has_a_sample_and_round_trips() -> None:
    assert set(ALL_SAMPLES) == set(m.ALL_MODELS)
    for name, sample in ALL_SAMPLES.items():
        model = m.ALL_MODELS[name]
        raw = sample.model_dump_json()
        assert model.model_validate_json(raw) == sample
        assert model.model_validate_json(raw).model_dump_json() == raw


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_rejected_and_named(bad: str) -> None:
    raw = HEARTBEAT.model_dump_json().replace('"cpu_busy_cores":3.5', f'"cpu_busy_cores":{bad}')
    assert bad in raw
    assert "cpu_busy_cores" in _error_text(m.ServerHeartbeat, raw)


def test_negative_load_is_rejected_and_named() -> None:
    assert "cpu_busy_cores" in _error_text(m.ServerHeartbeat, _with(HEARTBEAT, cpu_busy_cores=-1))


def test_busy_over_capacity_is_rejected() -> None:
    text = _error_text(m.ServerHeartbeat, _with(HEARTBEAT, cpu_busy_cores=9.0))
    assert "exceeds capacity_cores" in text


def test_unknown_field_is_rejected_and_named() -> None:
    assert "surprise" in _error_text(m.ServerHeartbeat, _with(HEARTBEAT, surprise=1))


def test_wrong_version_is_rejected_and_named() -> None:
    assert "schema_version" in _error_text(m.ServerHeartbeat, _with(HEARTBEAT, schema_version=2))


def test_oversized_list_is_rejected_and_named() -> None:
    server = json.loads(POP_LOAD.servers[0].model_dump_json())
    data = _with(POP_LOAD, servers=[server] * (m.MAX_SERVERS_PER_POP + 1))
    assert "servers" in _error_text(m.PopLoad, data)


def test_feedback_union_dispatches_on_kind() -> None:
    assert isinstance(
        m.FEEDBACK_ADAPTER.validate_json(HEARTBEAT.model_dump_json()), m.ServerHeartbeat
    )
    with pytest.raises(ValidationError):
        m.FEEDBACK_ADAPTER.validate_json('{"kind": "martian"}')


def test_policy_rejects_shares_over_one_self_forwarding_and_cancel_with_shares() -> None:
    shares = [
        {"tier": 0, "destination": "fra", "share": 0.6},
        {"tier": 0, "destination": "lhr", "share": 0.5},
    ]
    assert "tier 0 forwards" in _error_text(m.PolicyEvent, _with(POLICY, shares=shares))
    self_share = [{"tier": 0, "destination": "ams", "share": 0.1}]
    assert "cannot forward to itself" in _error_text(
        m.PolicyEvent, _with(POLICY, shares=self_share)
    )
    assert "cancel carries no shares" in _error_text(m.PolicyEvent, _with(POLICY, action="cancel"))


def test_committed_json_schemas_match_the_models() -> None:
    rendered = render_all()
    committed = {p.name: p.read_text() for p in JSON_DIR.glob("*.schema.json")}
    assert committed == rendered, "schemas/json drifted: run `popshift schemas generate`"
