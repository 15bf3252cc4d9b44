"""Model binding, per-model thresholds and registry-free commands, tested the way users
configure speakerid: the real CLI in a fresh process, environment variables, relative paths
and a clean home (issue 10, items 1, 3, 7, 8 and 12)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from speakerid.embedding import weights
from speakerid.registry.store import Registry

from .conftest import ROOT, TEST_MODEL, needs_asset, needs_shared

CLIPS = ROOT / "data" / "clips"
A1, A2, A3 = sorted((CLIPS / "so0003").glob("*.opus"))[:3]
B1, B2 = sorted((CLIPS / "so0044").glob("*.opus"))[:2]


def run(cwd: Path, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m speakerid ARGS`` in a fresh process with only the given speakerid vars."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SPEAKERID_")}
    base["SPEAKERID_CACHE"] = os.environ["SPEAKERID_CACHE"]  # ONNX exports: once per run
    base.update({"SPEAKERID_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "speakerid", *map(str, args)],
        cwd=cwd,
        env=base,
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_line_error(r: subprocess.CompletedProcess, *fragments: str) -> str:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


@needs_shared
def test_registry_made_with_env_model_keeps_working(tmp_path, tiny_ckpt):
    shutil.copy(tiny_ckpt, tmp_path / "m.pt")
    env = {"SPEAKERID_HOME": "h", "SPEAKERID_MODEL": "m.pt"}  # relative, as users type it
    assert run(tmp_path, "enroll", "alice", A1, A2, env=env).returncode == 0
    # the second write and a read in the same environment (this failed: "unknown model 'm'")
    r = run(tmp_path, "enroll", "bob", B1, env=env)
    assert r.returncode == 0, r.stderr
    r = run(tmp_path, "identify", A3, "--json", "--threshold", "-1", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["candidates"][0]["speaker"] in {"alice", "bob"}
    # the stored reference is resolvable: the absolute path, not the stem
    reg = Registry(tmp_path / "h" / "registry.db", create=False)
    assert reg.binding().model_ref == str((tmp_path / "m.pt").resolve())
    assert reg.binding().model_name == "m"
    reg.close()
    # without the variable the registry finds its own model
    r = run(tmp_path, "enroll", "carol", B2, env={"SPEAKERID_HOME": "h"})
    assert r.returncode == 0, r.stderr


@needs_shared
def test_moved_model_file_is_named_and_fixed_with_model(tmp_path, tiny_ckpt):
    shutil.copy(tiny_ckpt, tmp_path / "m.pt")
    env = {"SPEAKERID_HOME": "h"}
    assert run(tmp_path, "enroll", "alice", A1, "--model", "m.pt", env=env).returncode == 0
    (tmp_path / "models").mkdir()
    (tmp_path / "m.pt").rename(tmp_path / "models" / "m.pt")
    r = run(tmp_path, "identify", A2, env=env)
    line = one_line_error(r, str(tmp_path / "m.pt"), "--model NEW_PATH", "sha256")
    assert "bound to model 'm'" in line
    # same file, new place: accepted (sha256 matches) and remembered
    r = run(tmp_path, "identify", A2, "--model", "models/m.pt", "-t", "-1", env=env)
    assert r.returncode == 0, r.stderr
    r = run(tmp_path, "identify", A2, "-t", "-1", env=env)
    assert r.returncode == 0, r.stderr
    # another model is refused, on reads and writes alike, and nothing is written
    for args in (("identify", A2), ("enroll", "bob", B1)):
        one_line_error(run(tmp_path, *args, "--model", "demo", env=env), "bound to model 'm'")
    reg = Registry(tmp_path / "h" / "registry.db", create=False)
    assert [s.name for s in reg.speakers()] == ["alice"]
    reg.close()


@needs_shared
def test_import_embeddings_respects_the_model_lock(tmp_path, tiny_ckpt):
    env = {"SPEAKERID_HOME": "h"}
    assert run(tmp_path, "enroll", "alice", A1, "--model", tiny_ckpt, env=env).returncode == 0
    np.save(tmp_path / "bob.npy", np.random.default_rng(0).standard_normal(192).astype("f4"))
    # vectors declared to come from another model: refused like enroll refuses it
    one_line_error(
        run(tmp_path, "import-embeddings", "bob.npy", "--model", "demo", env=env),
        "bound to model",
    )
    # even a model that is not installed (identified by its pinned sha256, no download)
    one_line_error(
        run(tmp_path, "import-embeddings", "bob.npy", "--model", "eres2netv2", env=env),
        "bound to model",
    )
    r = run(tmp_path, "list", "--json", env=env)
    assert [s["name"] for s in json.loads(r.stdout)] == ["alice"]
    # the registry's own model (or none named) is accepted
    r = run(tmp_path, "import-embeddings", "bob.npy", "--model", tiny_ckpt, "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["speaker"] == "bob"


def test_import_embeddings_binds_a_new_registry_offline_without_download(tmp_path):
    np.save(tmp_path / "bob.npy", np.ones(192, "f4"))
    env = {"SPEAKERID_HOME": "h"}
    r = run(tmp_path, "import-embeddings", "bob.npy", "--model", "eres2netv2", env=env)
    assert r.returncode == 0, r.stderr
    reg = Registry(tmp_path / "h" / "registry.db", create=False)
    b = reg.binding()
    assert (b.model_name, b.model_ref) == ("eres2netv2", "eres2netv2")
    assert b.model_sha256 == weights.KNOWN_MODELS["eres2netv2"].sha256
    reg.close()
    assert not (tmp_path / "h" / "models").exists()  # nothing was downloaded


@needs_asset
def test_thresholds_come_from_the_bound_models_card(tmp_path):
    env = {"SPEAKERID_HOME": "h"}
    assert run(tmp_path, "enroll", "a", A1, "--model", TEST_MODEL, env=env).returncode == 0
    r = run(tmp_path, "info", "--json", env=env)
    info = json.loads(r.stdout)
    assert info["threshold"] == pytest.approx(0.2222)
    assert info["threshold_source"] == "model card (eres2netv2-m32-so762)"
    assert run(tmp_path, "threshold", "0.3", env=env).stdout.strip() == "0.3 (set by user)"
    r = run(tmp_path, "threshold", "--reset", "--json", env=env)
    assert json.loads(r.stdout) == {
        "threshold": 0.2222,
        "source": "model card (eres2netv2-m32-so762)",
    }
    # the bundled demo model's card
    env2 = {"SPEAKERID_HOME": "h2"}
    assert run(tmp_path, "enroll", "a", A1, "--model", "demo", env=env2).returncode == 0
    r = run(tmp_path, "threshold", "--json", env=env2)
    card = weights.model_card("demo")["recommended_threshold"]
    assert json.loads(r.stdout) == {"threshold": card, "source": "model card (demo)"}


def test_compare_uses_the_models_threshold_and_creates_nothing(tmp_path):
    home = tmp_path / "home"
    env = {"SPEAKERID_HOME": "home"}
    r = run(tmp_path, "compare", A1, A2, "--model", "demo", "--json", env=env)
    assert r.returncode in (0, 1), r.stderr
    out = json.loads(r.stdout)
    assert out["threshold"] == weights.model_card("demo")["recommended_threshold"]
    assert not home.exists() or not any(home.rglob("registry.db*"))
    # an explicit --db is not created either
    r = run(tmp_path, "compare", A1, A2, "--model", "demo", "--db", "sub/x.db")
    assert r.returncode in (0, 1), r.stderr
    assert not (tmp_path / "sub").exists()


def test_read_only_commands_on_a_missing_registry_fail_and_create_nothing(tmp_path):
    for args in (
        ("list", "--db", "typo/dir/x.db"),
        ("show", "alice", "--db", "typo/dir/x.db"),
        ("info", "--db", "typo/dir/x.db"),
        ("identify", A1, "--db", "typo/dir/x.db", "--model", "demo"),
        ("remove", "alice", "--yes", "--db", "typo/dir/x.db"),
    ):
        one_line_error(run(tmp_path, *args), "no registry at typo/dir/x.db")
    assert not (tmp_path / "typo").exists()


def test_offline_first_run_names_the_way_out(tmp_path):
    line = one_line_error(
        run(tmp_path, "enroll", "alice", A1, env={"SPEAKERID_HOME": "h"}),
        "--model demo",
        "speakerid model install FILE --name eres2netv2",
    )
    assert line.count("https://") == 1
    assert not (tmp_path / "h" / "registry.db").exists()  # nothing written on failure


def test_model_info_of_a_known_model_does_not_download(tmp_path):
    r = run(tmp_path, "model", "info", "eres2netv2", "--json", env={"SPEAKERID_HOME": "h"})
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["installed"] is False and info["parameters"] == 17_859_632
    assert info["sha256"] == weights.KNOWN_MODELS["eres2netv2"].sha256
    assert not (tmp_path / "h" / "models").exists()


def test_demo_prints_commands_that_work_as_printed(tmp_path):
    env = {"SPEAKERID_HOME": str(tmp_path / "home")}
    r = run(tmp_path, "demo", env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("Try it yourself"))
    commands = [ln.strip() for ln in lines[start + 1 :] if ln.strip()]
    assert len(commands) == 3 and "--model demo" in commands[0]
    base = {k: v for k, v in os.environ.items() if not k.startswith("SPEAKERID_")}
    base["SPEAKERID_CACHE"] = os.environ["SPEAKERID_CACHE"]  # ONNX exports: once per run
    base.update(env, SPEAKERID_OFFLINE="1", OMP_NUM_THREADS="1")
    outputs = []
    for cmd in commands * 2:  # and again: the printed commands are safe to re-run
        done = subprocess.run(
            cmd, shell=True, cwd=tmp_path, env=base, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, (cmd, done.stdout, done.stderr)
        outputs.append(done.stdout)
    assert "so0003" in outputs[1] and outputs[2].startswith("accepted")
