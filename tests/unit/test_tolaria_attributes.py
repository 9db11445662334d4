"""Every attribute of a Tolaria object is set in its ``__init__``: what an object holds is read in one place."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TOLARIA = Path(__file__).resolve().parents[2] / "services" / "tolaria"


def _self_attributes(function: ast.FunctionDef) -> set[str]:
    """Names of ``self.<name>`` assigned (plainly, augmented or annotated) anywhere in ``function``."""
    names = set()
    for node in ast.walk(function):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for target in targets:
            for leaf in ast.walk(target):
                if isinstance(leaf, ast.Attribute) and isinstance(leaf.value, ast.Name) and leaf.value.id == "self":
                    names.add(leaf.attr)
    return names


def _attributes_set_outside_init(source: str) -> list[str]:
    found = []
    for cls in (n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef)):
        methods = [n for n in cls.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        in_init = set().union(*(_self_attributes(m) for m in methods if m.name == "__init__"))
        for method in methods:
            if method.name != "__init__":
                found += [f"{cls.name}.{method.name} sets self.{a}" for a in sorted(_self_attributes(method) - in_init)]
    return found


@pytest.mark.parametrize("path", sorted(TOLARIA.glob("*.py")), ids=lambda p: p.name)
def test_no_attribute_is_first_set_outside_init(path):
    assert _attributes_set_outside_init(path.read_text()) == []


def test_the_check_finds_an_attribute_set_outside_init():
    source = ("class A:\n    def __init__(self):\n        self.a = 1\n"
              "    def go(self):\n        self.a += 1\n        self.b, self.c = 2, 3\n")
    assert _attributes_set_outside_init(source) == ["A.go sets self.b", "A.go sets self.c"]
