"""Docs that drift from code are worse than none: README's settings tables are checked here."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from pydantic_settings import BaseSettings

import popshift
import services
from popshift.settings import DOCUMENTED_SETTINGS, markdown_table

README = Path(__file__).resolve().parent.parent / "README.md"


def _all_subclasses(cls: type) -> set[type]:
    found: set[type] = set()
    sub: type
    for sub in cls.__subclasses__():
        found |= {sub} | _all_subclasses(sub)
    return found


def test_readme_carries_every_settings_table_as_generated() -> None:
    text = README.read_text()
    for dotted in DOCUMENTED_SETTINGS:
        assert markdown_table(dotted) in text, (
            f"README's table for {dotted} drifted: paste `popshift settings --markdown`"
        )


def test_every_settings_class_is_documented() -> None:
    for package in (popshift, services):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if not info.name.endswith(("__main__", ".build")):
                importlib.import_module(info.name)
    ours = {
        f"{c.__module__}.{c.__qualname__}"
        for c in _all_subclasses(BaseSettings)
        if c.__module__.startswith(("popshift.", "services."))
    }
    assert ours <= set(DOCUMENTED_SETTINGS)
