"""Every sync setting is documented; once README carries its table, the table matches the code."""

from __future__ import annotations

import pytest

from services.feedback_ingest.settings import PipelineSettings
from services.forwarder.sync_settings import SyncSettings
from tests.test_docs import README, expected_rows, rows_for

MARKER = "services.forwarder.sync_settings.SyncSettings"


def own_rows() -> dict[str, tuple[str, str]]:
    """Only the fields the sync adds; the shared ones have their own table."""
    shared = expected_rows(PipelineSettings)
    return {k: v for k, v in expected_rows(SyncSettings).items() if k not in shared}


def test_every_sync_setting_has_a_description() -> None:
    rows = own_rows()
    assert "POPSHIFT_SYNC_POLL_S" in rows and "POPSHIFT_TABLE_KEY_PREFIX" in rows
    assert all(description not in ("", "None") for _, description in rows.values())


def test_readme_table_matches_the_settings() -> None:
    if f"<!-- settings-table: {MARKER} -->" not in README.read_text():
        pytest.skip("README has no sync settings table yet")
    assert rows_for(MARKER) == own_rows()
