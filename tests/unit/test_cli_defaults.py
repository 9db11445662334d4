"""Every file a command defaults to exists (a module moved one folder deeper once pointed its default away)."""

from __future__ import annotations

import argparse
from pathlib import Path

from services.cli.main import build_parser

FILE_SUFFIXES = (".yaml", ".yml", ".json", ".safetensors")
WRITTEN = {"output", "out", "report"}  # files a command writes, not reads


def default_files(parser: argparse.ArgumentParser, command: str = "esper") -> list[tuple[str, str, object]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += default_files(sub, f"{command} {name}")
        elif (isinstance(action.default, str | Path) and str(action.default).endswith(FILE_SUFFIXES)
              and action.dest not in WRITTEN):
            found.append((command, action.dest, action.default))
    return found


def test_every_default_file_exists():
    defaults = default_files(build_parser())
    assert any(command == "esper demo" for command, _, _ in defaults)  # the walk reaches subcommands
    assert [d for d in defaults if not Path(d[2]).is_file()] == []
