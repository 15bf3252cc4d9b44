"""Compute threads: $SPEAKERID_THREADS and --threads, validated, applied to torch and ORT."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from speakerid import config, errors
from speakerid.cli import app
from speakerid.embedding.embedder import Embedder

from .conftest import ROOT

runner = CliRunner()
CLIP = ROOT / "data" / "clips" / "so0003" / "000030012.opus"


@pytest.fixture
def torch_threads():
    """Restore this process's torch thread count after a test that changes it."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _env(**extra: str) -> dict[str, str]:
    """A user's environment: no test-suite thread settings, speakerid importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "SPEAKERID_THREADS")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def test_env_var_is_parsed_and_validated(monkeypatch):
    monkeypatch.setenv("SPEAKERID_THREADS", " 3 ")
    assert config.default_threads() == 3
    for auto in ("auto", ""):
        monkeypatch.setenv("SPEAKERID_THREADS", auto)
        assert config.default_threads() == config.auto_threads()
    bad = {
        "0": "$SPEAKERID_THREADS must be between 1 and 1024, got 0",
        "-2": "$SPEAKERID_THREADS must be between 1 and 1024, got -2",
        "two": "$SPEAKERID_THREADS must be a positive integer, got 'two'",
        "1.5": "$SPEAKERID_THREADS must be a positive integer, got '1.5'",
    }
    for raw, message in bad.items():
        monkeypatch.setenv("SPEAKERID_THREADS", raw)
        with pytest.raises(errors.InvalidInputError) as exc:
            config.default_threads()
        assert str(exc.value) == message


def test_automatic_choice_follows_the_measured_policy():
    # docs/performance.md "Threads": every core (2 threads on 2 cores: 1.3-1.7x faster idle and
    # no slower under load once OpenMP spinning is bounded), at most 4
    assert [config.auto_threads(c) for c in (1, 2, 3, 4, 8, 64)] == [1, 2, 3, 4, 4, 4]
    assert config.auto_threads() == min(config.available_cores(), 4)


def test_openmp_spinning_is_bounded_on_import_unless_the_user_chose():
    code = "import os, speakerid; print(os.environ.get('GOMP_SPINCOUNT'))"

    def spin(**extra: str) -> str:
        env = _env(**extra)
        for name in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
            if name not in extra:
                env.pop(name, None)
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()

    assert spin() == "1000"
    assert spin(GOMP_SPINCOUNT="50") == "50"
    assert spin(OMP_WAIT_POLICY="ACTIVE") == "None"


def test_cli_option_errors_are_one_line(tiny_ckpt, monkeypatch):
    for value, message in {
        "0": "error: --threads must be between 1 and 1024, got 0",
        "many": "error: --threads must be a positive integer, got 'many'",
    }.items():
        res = runner.invoke(app, ["embed", str(CLIP), "-m", str(tiny_ckpt), "--threads", value])
        assert res.exit_code == 2 and res.stderr.strip() == message, res.output
        assert res.stdout == ""
    monkeypatch.setenv("SPEAKERID_THREADS", "lots")
    res = runner.invoke(app, ["embed", str(CLIP), "-m", str(tiny_ckpt)])
    assert res.exit_code == 2
    assert res.stderr.strip() == "error: $SPEAKERID_THREADS must be a positive integer, got 'lots'"


def test_cli_option_sets_the_threads_of_an_in_process_run(tiny_ckpt, monkeypatch, torch_threads):
    import torch

    monkeypatch.setenv("SPEAKERID_THREADS", "1")  # restored after the test (the option sets it)
    cmd = ["embed", str(CLIP), "-m", str(tiny_ckpt), "--backend", "torch", "--threads", "2"]
    res = runner.invoke(app, cmd)
    assert res.exit_code == 0, res.output
    assert torch.get_num_threads() == 2
    assert Embedder(tiny_ckpt, threads=1, backend="torch").threads == torch.get_num_threads() == 1


def test_env_var_reaches_torch_in_a_fresh_process(tiny_ckpt):
    code = (
        "import sys, torch; from speakerid.embedding.embedder import Embedder; "
        "e = Embedder(sys.argv[1], backend='torch'); "
        "print(e.threads, torch.get_num_threads(), torch.get_num_interop_threads())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tiny_ckpt)],
        env=_env(SPEAKERID_THREADS="2"),
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["2", "2", "2"]


def test_cli_option_wins_over_the_env_var_in_a_fresh_process(tiny_ckpt, tmp_path):
    """How users run it: `python -m speakerid`, relative paths, a clean home."""
    shutil.copy(CLIP, tmp_path / "a.opus")
    shutil.copy(tiny_ckpt, tmp_path / "tiny.pt")
    env = _env(SPEAKERID_THREADS="2", SPEAKERID_HOME=str(tmp_path / "home"), SPEAKERID_LOG="DEBUG")
    cmd = [sys.executable, "-m", "speakerid", "embed", "a.opus", "-m", "tiny.pt", "--json"]
    cmd += ["--backend", "torch"]
    out = subprocess.run(
        [*cmd, "--threads", "1"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "torch threads: 1 intra-op, 1 inter-op" in out.stderr


def test_onnx_sessions_get_the_same_thread_count(tiny_ckpt, monkeypatch, torch_threads):
    pytest.importorskip("onnxruntime")
    emb = Embedder(tiny_ckpt, backend="onnx", threads=2)
    assert emb._onnx.session.get_session_options().intra_op_num_threads == 2
    monkeypatch.setenv("SPEAKERID_THREADS", "1")
    emb = Embedder(tiny_ckpt, backend="onnx")
    assert emb.threads == 1
    assert emb._onnx.session.get_session_options().intra_op_num_threads == 1
