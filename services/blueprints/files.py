"""Reading blueprints from YAML/JSON files (``esper blueprint submit FILE``)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from pydantic import ValidationError

from contracts import Blueprint


def load_blueprints(path: str | Path) -> list[Blueprint]:
    """One blueprint or a list of them; ``blueprint_id`` is derived from the architecture when absent."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path} is not valid JSON/YAML: {str(exc).splitlines()[0]}") from None
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
