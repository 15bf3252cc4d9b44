"""The distribution as users install it (issue 21, item 6): "speakerid" on PyPI is another
project, so ours is ``speakerid-eres2net`` (import package and command stay ``speakerid``).
The wheel is built from the working tree and installed into a fresh environment that cannot see
the editable checkout (its heavy dependencies come from this venv's site-packages through a
``.pth`` file); ``speakerid --version`` and ``speakerid demo --json`` run from it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import speakerid

from .conftest import ROOT

DIST = "speakerid-eres2net"
#: pyproject.toml's version (tomllib is Python 3.11+; the project supports 3.10)
VERSION = re.search(
    r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.M
).group(1)


def _sh(*args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-4000:])
    return r


def _checkout_copy(dst: Path) -> None:
    """What a clone holds (tracked and untracked-but-not-ignored files): no build/ folder with
    stale modules, no egg-info, no .venv can leak into the wheel."""
    listed = _sh("git", "ls-files", "-z", "-c", "-o", "--exclude-standard", cwd=ROOT).stdout
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if src.is_file():  # a tracked file deleted in the working tree is not built
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(fresh env, its site-packages, the wheel): the wheel installed with ``pip --python``."""
    tmp = tmp_path_factory.mktemp("wheel")
    _checkout_copy(tmp / "src")
    _sh(
        sys.executable,
        *("-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"),
        *(tmp / "src", "-w", tmp / "dist"),
        cwd=tmp,
    )
    wheels = list((tmp / "dist").glob("*.whl"))
    assert [w.name for w in wheels] == [f"speakerid_eres2net-{VERSION}-py3-none-any.whl"]
    env_dir = tmp / "env"
    _sh(sys.executable, "-m", "venv", "--without-pip", env_dir, cwd=tmp)
    python = env_dir / "bin" / "python"
    site = Path(
        _sh(
            python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp
        ).stdout.strip()
    )
    # installed before the env sees this venv: pip would take the checkout's editable install
    # of the same name and version for this wheel ("already installed") and skip it
    _sh(
        sys.executable,
        *("-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q"),
        wheels[0],
        cwd=tmp,
    )
    # torch, numpy, onnxruntime...: this venv's packages, as plain path entries (their .pth
    # files, the editable install's finder among them, are not processed from there)
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "_speakerid_test_deps.pth").write_text("".join(f"{p}\n" for p in deps))
    return env_dir, site, wheels[0]


def _env(tmp: Path) -> dict:
    """A user's environment: no PYTHONPATH, a clean home, offline (the bundled demo model)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPEAKERID_", "PYTHON"))}
    env.update(
        SPEAKERID_HOME=str(tmp / "home"),
        SPEAKERID_OFFLINE="1",
        SPEAKERID_CACHE=os.environ["SPEAKERID_CACHE"],  # the run's ONNX exports
        OMP_NUM_THREADS="1",
    )
    return env


def test_the_wheel_installs_our_distribution_and_not_the_checkout(installed, tmp_path):
    env_dir, site, wheel = installed
    script = env_dir / "bin" / "speakerid"
    assert script.read_text().splitlines()[0] == f"#!{env_dir / 'bin' / 'python'}"
    r = _sh(script, "--version", cwd=tmp_path, env=_env(tmp_path))
    assert r.stdout == f"speakerid {VERSION}\n" == f"speakerid {speakerid.__version__}\n"
    probe = (
        "import importlib.metadata as m, importlib.util, json, sys\n"
        "import speakerid\n"
        f"d = m.distribution({DIST!r})\n"
        "print(json.dumps({'module': speakerid.__file__, 'name': d.metadata['Name'],\n"
        " 'version': d.version, 'owner': str(d.locate_file('speakerid/__init__.py')),\n"
        " 'scripts': [e.value for e in d.entry_points if e.group == 'console_scripts'],\n"
        " 'finders': [type(f).__name__ for f in sys.meta_path], 'path': sys.path}))\n"
    )
    got = json.loads(
        _sh(env_dir / "bin" / "python", "-c", probe, cwd=tmp_path, env=_env(tmp_path)).stdout
    )
    module = Path(got["module"]).resolve()
    assert module == (site / "speakerid" / "__init__.py").resolve()  # the wheel's copy
    assert module.is_relative_to(env_dir.resolve()) and not module.is_relative_to(ROOT)
    assert Path(got["owner"]).resolve() == module  # and importlib.metadata says it is ours
    assert (got["name"], got["version"], got["scripts"]) == (DIST, VERSION, ["speakerid.cli:main"])
    assert not any("editable" in f.lower() for f in got["finders"])
    assert not any(Path(p).resolve() == ROOT.resolve() for p in got["path"] if p)


def test_demo_runs_from_the_installed_wheel(installed, tmp_path):
    env_dir, site, _ = installed
    r = _sh(env_dir / "bin" / "speakerid", "demo", "--json", cwd=tmp_path, env=_env(tmp_path))
    report = json.loads(r.stdout)
    assert report["model"]["name"] == "demo"  # offline: the bundled model, shipped in the wheel
    # the sample clips ship in the wheel (speakerid/assets/clips), not read from the checkout
    clips = (site / "speakerid" / "assets" / "clips").resolve()
    files = [Path(f) for e in report["enrolled"] for f in e["files"]]
    assert len(report["enrolled"]) == 6 and all(f.resolve().is_relative_to(clips) for f in files)
    rows = report["identified"]
    assert len(rows) == 7 and report["correct"] == sum(r["correct"] for r in rows) >= 6
    assert [v["claim"] for v in report["verified"]] == ["genuine", "impostor"]
    assert [v["accepted"] for v in report["verified"]] == [True, False]
    assert (site / "speakerid" / "assets" / "clips" / "README.md").is_file()  # attribution
