"""Data files are located in one place (``services/core/paths.py``), and every location there exists."""

from __future__ import annotations

import re
from pathlib import Path

import services.core.paths as paths

# Mutable state: created on first use, so a fresh clone has neither.
CREATED_ON_USE = {"DEFAULT_STATE_DIR", "DEFAULT_CACHE_DIR"}


def test_every_shipped_location_exists():
    locations = {name: value for name, value in vars(paths).items() if isinstance(value, Path)}
    assert "SCHEMAS_DIR" in locations and "INITIAL_POLICY" in locations
    missing = [f"{name}={value}" for name, value in locations.items()
               if name not in CREATED_ON_USE and not value.exists()]
    assert missing == []
    assert all(value.is_relative_to(paths.REPO_ROOT) for value in locations.values())


def test_no_other_module_finds_files_from_its_own_location():
    uses = re.compile(r"\b__file__\b")
    offenders = [str(path.relative_to(paths.REPO_ROOT))
                 for folder in ("contracts", "services") for path in sorted((paths.REPO_ROOT / folder).rglob("*.py"))
                 if path != Path(paths.__file__).resolve() and uses.search(path.read_text())]
    assert offenders == []
