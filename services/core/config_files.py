"""Reading a YAML or JSON document from a file, with one-line errors (shared by run configs and blueprints)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from services.core.errors import InputError


def read_document(path: str | Path) -> object:
    """The parsed content (JSON for ``.json``, YAML otherwise); ``InputError`` with a one-line reason."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    is_json = path.suffix == ".json"
    try:
        return json.loads(text) if is_json else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"{path} is not valid {'JSON' if is_json else 'YAML'}: {str(exc).splitlines()[0]}") from None
