"""The folder tree shows the pipeline, and imports only go down it (docs/architecture.md).

Every ``import`` and ``from ... import`` in ``speakerid/`` -- at module level or inside a
function -- is resolved and checked against the stage order; a module may import its own stage
or any stage below it, never one above.
"""

from __future__ import annotations

import ast

import pytest

from .conftest import ROOT

PKG = ROOT / "speakerid"
#: The stages in the order audio flows through them (docs/architecture.md); fronts last.
RANK = {
    "errors": 0,
    "config": 0,
    "results": 0,
    "assets": 0,
    "migrations": 0,  # Alembic's scripts, shipped as speakerid.migrations
    "__version__": 0,  # `from speakerid import __version__`
    "audio": 1,
    "embedding": 2,
    "scoring": 3,
    "tracking": 4,
    "registry": 5,
    "service": 6,
    "training": 7,
    "client": 8,
    "server": 8,
    "cli": 9,
    "__main__": 9,
}


def _stage(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def _module(path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path):
    """(line, imported module) for every speakerid import in ``path``."""
    here = _module(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("speakerid."):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("speakerid"):
                continue
            if target == "speakerid":  # `from speakerid import x`: x is the stage
                for alias in node.names:
                    yield node.lineno, f"speakerid.{alias.name}"
            else:
                yield node.lineno, target


def test_top_level_holds_only_a_handful_of_modules():
    modules = sorted(p.name for p in PKG.glob("*.py"))
    assert modules == [
        "__init__.py",
        "__main__.py",
        "client.py",
        "config.py",
        "errors.py",
        "results.py",
    ]
    packages = sorted(p.name for p in PKG.iterdir() if (p / "__init__.py").is_file())
    assert packages == sorted(
        ["assets", "audio", "cli", "embedding", "registry", "scoring", "server", "service",
         "tracking", "training"]
    )  # fmt: skip


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_imports_only_go_down_the_pipeline(path):
    stage = _stage(_module(path))
    if stage == "__init__":  # the public API's lazy exports reach every stage by design
        return
    upward = [
        f"line {line}: {target}"
        for line, target in _imports(path)
        if _stage(target) != "__init__" and RANK[_stage(target)] > RANK[stage]
    ]
    assert not upward, f"{path.relative_to(ROOT)} ({stage}) imports a stage above it: {upward}"


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The rule can fail: an audio module importing the registry is reported."""
    fake = PKG / "audio" / "decode.py"
    text = fake.read_text() + "\n\ndef _x():\n    from ..registry.store import Registry\n"
    monkeypatch.setattr(type(fake), "read_text", lambda self, *a, **k: text)
    found = [t for _, t in _imports(fake)]
    assert "speakerid.registry.store" in found
    assert RANK[_stage("speakerid.registry.store")] > RANK[_stage(_module(fake))]
