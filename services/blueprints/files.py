"""Reading blueprints from YAML/JSON files (``esper blueprint submit FILE``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from contracts import Blueprint
from services.core.config_files import read_document
from services.core.errors import InputError


def load_blueprints(path: str | Path) -> list[Blueprint]:
    """One blueprint or a list of them; ``blueprint_id`` is derived from the architecture when absent.

    The contract checks a given id against the content and the IR against its limits.
    """
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
            raise InputError(f"{path}: blueprint {i}: {where + ': ' if where else ''}{first['msg']}") from None
        blueprints.append(bp)
    return blueprints
