"""The ONNX Runtime backend: same embeddings as PyTorch, cached export, clear errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from speakerid import errors
from speakerid.audio.decode import load_audio
from speakerid.cli import app
from speakerid.embedding import onnx_backend
from speakerid.embedding.embedder import Embedder

from .budgets import COSINE_SAME, SCORE_ATOL
from .conftest import real_speech, speechlike, wav_bytes

runner = CliRunner()


def _clips():
    return [load_audio(wav_bytes(speechlike(s, seed=i))) for i, s in enumerate([1.0, 2.4, 1.0])]


def test_onnx_backend_gives_the_torch_embeddings_and_caches_its_export(tiny_ckpt):
    torch_emb = Embedder(tiny_ckpt, backend="torch")
    onnx_emb = Embedder(tiny_ckpt, backend="onnx")
    cached = onnx_backend.cache_path(onnx_emb.sha256)
    assert onnx_emb.backend == "onnx" and cached.is_file()
    clips = _clips()  # two equal lengths (one batched call) and one other
    for a, b in zip(torch_emb.embed_many(clips), onnx_emb.embed_many(clips, batch_size=3)):
        assert a.model == b.model == "tiny"
        assert float(a.vector @ b.vector) > COSINE_SAME
    stamp = cached.stat().st_mtime_ns
    Embedder(tiny_ckpt, backend="onnx")  # second use: no new export
    assert cached.stat().st_mtime_ns == stamp


def test_a_corrupt_cached_export_is_rebuilt(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("SPEAKERID_CACHE", str(tmp_path / "cache"))  # not the shared one
    first = Embedder(tiny_ckpt, backend="onnx")
    path = onnx_backend.cache_path(first.sha256)
    path.write_bytes(b"not an onnx file")
    again = Embedder(tiny_ckpt, backend="onnx")
    assert path.stat().st_size > 1000
    clip = _clips()[1]
    assert float(first.embed(clip).vector @ again.embed(clip).vector) > COSINE_SAME


def test_backend_from_environment_and_its_errors(tiny_ckpt, monkeypatch):
    monkeypatch.setenv("SPEAKERID_BACKEND", "onnx")
    assert Embedder(tiny_ckpt).backend == "onnx"
    monkeypatch.setenv("SPEAKERID_BACKEND", "tensorrt")
    with pytest.raises(errors.InvalidInputError, match=r"\$SPEAKERID_BACKEND='tensorrt': use"):
        Embedder(tiny_ckpt)
    with pytest.raises(errors.InvalidInputError, match="unknown backend 'tf'"):
        Embedder(tiny_ckpt, backend="tf")


def test_missing_onnxruntime_is_a_one_line_error(tiny_ckpt, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with pytest.raises(errors.OnnxUnavailableError, match="pip install onnx onnxruntime"):
        Embedder(tiny_ckpt, backend="onnx")


def test_cli_export_onnx_reports_agreement(tiny_ckpt, tmp_path):
    out = tmp_path / "tiny.onnx"
    res = runner.invoke(app, ["model", "export-onnx", str(tiny_ckpt), "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["onnx"] == str(out) and out.stat().st_size == data["bytes"] > 1000
    assert data["name"] == "tiny" and data["min_cosine_vs_torch"] > COSINE_SAME
    bad = runner.invoke(app, ["model", "export-onnx", str(tmp_path / "nope.pt")])
    assert bad.exit_code == 2 and bad.output.startswith("error: ")
    assert len(bad.output.strip().splitlines()) == 1


def test_registry_enrolled_with_torch_identifies_with_onnx(tiny_ckpt, tmp_path, monkeypatch):
    """A backend is not a model: the registry's binding accepts both, scores agree."""
    db = tmp_path / "r.db"
    files = []
    for i in range(3):
        files.append(tmp_path / f"a{i}.wav")
        files[-1].write_bytes(wav_bytes(real_speech(i)))  # real speech: passes the gates
    base = ["--db", str(db), "--json"]
    monkeypatch.setenv("SPEAKERID_BACKEND", "torch")
    res = runner.invoke(app, ["enroll", "alice", str(files[0]), "--model", str(tiny_ckpt), *base])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["enroll", "bob", str(files[1]), *base])
    assert res.exit_code == 0, res.output
    plain = json.loads(runner.invoke(app, ["identify", str(files[2]), *base]).stdout)[0]
    monkeypatch.setenv("SPEAKERID_BACKEND", "onnx")
    fast = json.loads(runner.invoke(app, ["identify", str(files[2]), *base]).stdout)[0]
    assert fast["speaker"] == plain["speaker"]
    assert np.isclose(fast["score"], plain["score"], atol=SCORE_ATOL)
