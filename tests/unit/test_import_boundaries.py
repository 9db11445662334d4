"""Dependencies point one way: every import between our packages must be an edge of ``ALLOWED``.

    contracts                          -> nothing of ours
    services.core                      -> nothing of ours (errors, progress, data-file locations)
    services.oona                      -> contracts, core (the bus: no settings, no command line)
    components                         -> contracts, core, oona + the documented edges below
    services.bench                     -> any component (measures them; no command line)
    services.cli                       -> anything (the command line and process supervision)

Nissa reaches Tamiyo only through ``services.tamiyo.replay_api``, imported inside a function (a replay
without a policy must not load torch). Every import is parsed, including those inside functions and
``TYPE_CHECKING`` blocks: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BASE = {"contracts", "services.core", "services.oona"}
COMPONENTS = {"blueprints", "kasmina", "tolaria", "tamiyo", "karn", "tezzeret", "urabrask", "urza", "nissa", "peers"}
ALLOWED: dict[str, set[str]] = {
    "contracts": set(),
    "services.core": set(),
    "services.oona": {"contracts", "services.core"},
    "services.blueprints": BASE,
    "services.kasmina": BASE | {"services.blueprints"},
    "services.urza": BASE | {"services.blueprints"},
    "services.urabrask": BASE | {"services.blueprints", "services.urza"},
    "services.tezzeret": BASE | {"services.blueprints", "services.urza"},
    "services.karn": BASE | {"services.blueprints", "services.urza"},
    "services.peers": BASE,  # other projects' growth (gromo), imported lazily by Tolaria for a peer arm
    "services.tolaria": BASE | {"services.blueprints", "services.kasmina", "services.urza", "services.peers"},
    "services.tamiyo": BASE | {"services.urza"},
    "services.nissa": BASE | {"services.tamiyo"},  # only replay_api, lazily: checked below
    "services.bench": BASE | {f"services.{c}" for c in COMPONENTS},
    "services.cli": BASE | {f"services.{c}" for c in COMPONENTS} | {"services.bench"},
}
NOT_IN_PRODUCTION = ("tests", "hypothesis", "pytest")


def package_of(module: str) -> str | None:
    """The package an import belongs to, as named in ``ALLOWED`` (None: not ours)."""
    parts = module.split(".")
    if parts[0] == "contracts":
        return "contracts"
    if parts[0] == "services" and len(parts) > 1:
        return f"services.{parts[1]}"
    return None


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every absolute import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(node) for node in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` / `try:` blocks at module level still run (or type) at import
        if isinstance(node, ast.If | ast.Try):
            top_level |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]  # `from services.tamiyo import replay_api`
            found += [(name, id(node) in top_level) for name in names]
    return found


def production_modules() -> list[Path]:
    return sorted([*REPO.glob("contracts/**/*.py"), *REPO.glob("services/**/*.py")])


def violations(files: list[Path]) -> list[str]:
    found = []
    for path in files:
        rel = path.relative_to(REPO)
        source = package_of(".".join(rel.with_suffix("").parts))
        for module, top_level in imports(path):
            if module.split(".")[0] in NOT_IN_PRODUCTION:
                found.append(f"{rel}: imports {module} (test-only)")
                continue
            target = package_of(module)
            if target is None or target == source:
                continue
            if source not in ALLOWED:
                found.append(f"{rel}: package {source} is not in the boundary table")
            elif target not in ALLOWED[source]:
                found.append(f"{rel}: {source} -> {module}")
            elif source == "services.nissa" and target == "services.tamiyo" and (
                    not module.startswith("services.tamiyo.replay_api") or top_level):
                found.append(f"{rel}: Nissa imports {module} (only services.tamiyo.replay_api, inside a function)")
    return found


def test_every_package_is_in_the_table():
    packages = {package_of(".".join(p.relative_to(REPO).with_suffix("").parts)) for p in production_modules()}
    packages.discard("services.__init__")
    assert packages - set(ALLOWED) == set(), "add the new package to ALLOWED (and to the README's architecture)"


def test_imports_follow_the_boundary_table():
    assert violations(production_modules()) == []


@pytest.mark.parametrize(("where", "source", "why"), [
    ("services/oona/x.py", "from services.cli.settings import load_settings", "services.oona -> services.cli"),
    ("services/urza/x.py", "def f():\n    import services.urabrask.characterize", "services.urza -> services.urabrask"),
    ("services/nissa/x.py", "from services.tamiyo.replay_api import NEEDED_TOPICS", "only services.tamiyo.replay_api"),
    ("services/nissa/x.py", "def f():\n    from services.tamiyo import decider", "only services.tamiyo.replay_api"),
    ("contracts/x.py", "from services.core.errors import EsperError", "contracts -> services.core"),
    ("services/core/x.py", "from hypothesis import given", "test-only"),
    ("services/newpkg/x.py", "import contracts", "not in the boundary table"),
])
def test_the_check_catches_a_wrong_edge(tmp_path, monkeypatch, where, source, why):
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    path = tmp_path / where
    path.parent.mkdir(parents=True)
    path.write_text(source + "\n")
    found = violations([path])
    assert len(found) == 1 and why in found[0], found


def test_a_lazy_replay_api_import_is_the_allowed_nissa_edge(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    path = tmp_path / "services" / "nissa" / "x.py"
    path.parent.mkdir(parents=True)
    path.write_text("def f():\n    from services.tamiyo import replay_api\n")
    assert violations([path]) == []
