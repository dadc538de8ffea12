"""Docs that drift from code are worse than none: README's settings tables are checked here."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic_settings import BaseSettings

from popshift.settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def rows_for(marker: str) -> dict[str, tuple[str, str]]:
    text = README.read_text()
    start = text.index(f"<!-- settings-table: {marker} -->")
    end = text.index("<!-- end settings-table -->", start)
    rows = {}
    for line in text[start:end].splitlines():
        match = re.match(r"\| `(POPSHIFT_[A-Z0-9_]+)` \| `(.*?)` \| (.*) \|$", line)
        if match:
            rows[match[1]] = (match[2], match[3])
    return rows


def expected_rows(cls: type[BaseSettings]) -> dict[str, tuple[str, str]]:
    prefix = str(cls.model_config.get("env_prefix", ""))
    return {
        f"{prefix}{name}".upper(): (str(field.default), str(field.description))
        for name, field in cls.model_fields.items()
    }


def test_readme_documents_every_shared_setting_with_its_default() -> None:
    assert rows_for("popshift.settings.Settings") == expected_rows(Settings)
