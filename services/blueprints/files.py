"""Reading blueprints from YAML/JSON files (``esper blueprint submit FILE``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from contracts import Blueprint
from services.config_files import read_document


def load_blueprints(path: str | Path) -> list[Blueprint]:
    """One blueprint or a list of them; ``blueprint_id`` is derived from the architecture when absent."""
    path = Path(path)
    raw = read_document(path)
    items = raw if isinstance(raw, list) else [raw]
    blueprints = []
    for i, item in enumerate(items):
        try:
            bp = Blueprint.model_validate(item)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"{path}: blueprint {i}: {where}: {first['msg']}") from None
        if item.get("blueprint_id") and item["blueprint_id"] != "bp-" + bp.architecture.content_hash()[:32]:
            raise ValueError(f"{path}: blueprint {i}: blueprint_id must be the content hash of the architecture "
                             f"(bp-{bp.architecture.content_hash()[:32]}) or left out")
        blueprints.append(bp)
    return blueprints
