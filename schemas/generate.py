"""Write the JSON Schema of every message into schemas/json/, so non-Python consumers can validate.

Run ``python -m schemas.generate`` (or ``popshift schemas generate``) after changing a model; a test
fails when the committed files drift from the models.
"""

from __future__ import annotations

import json
from pathlib import Path

from schemas.messages import ALL_MODELS

JSON_DIR = Path(__file__).resolve().parent / "json"


def render_all() -> dict[str, str]:
    """File name -> JSON text, for every model; stable so diffs are meaningful."""
    return {
        f"{name}.schema.json": json.dumps(model.model_json_schema(), indent=2, sort_keys=True)
        + "\n"
        for name, model in ALL_MODELS.items()
    }


def write_all(directory: Path = JSON_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, text in render_all().items():
        path = directory / filename
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_all():
        print(p)
