"""``speakerid track`` mechanics with the tiny fixture model: JSON contract, RTTM, plot,
errors, streaming equivalence of the window embeddings (real speech, random weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from speakerid.cli import app

from .budgets import COSINE_SAME
from .conftest import needs_shared, real_speech

runner = CliRunner()
SR = 16000


@pytest.fixture
def talk(write_wav):
    """Three real voices taking turns (about 14 s), as a WAV file."""
    gap = np.zeros(SR // 2, np.float32)
    parts = [real_speech(0), gap, real_speech(1), gap, real_speech(2), gap, real_speech(1)]
    return write_wav("talk.wav", np.concatenate(parts))


def _track(*args):
    return runner.invoke(app, ["track", *map(str, args)])


@needs_shared
def test_json_contract_without_registry(talk, tiny_ckpt, tmp_path):
    res = _track(talk, "--model", tiny_ckpt, "--db", tmp_path / "none.db", "--json")
    assert res.exit_code == 0, res.output
    (out,) = json.loads(res.stdout)
    assert list(out) == ["file", "duration", "segments", "speakers", "threshold"]
    assert out["file"] == str(talk) and out["threshold"] is None
    assert out["duration"] == pytest.approx(
        len(np.concatenate([real_speech(i) for i in (0, 1, 2, 1)])) / SR + 1.5, abs=0.01
    )
    segs = out["segments"]
    assert segs and all(s["end"] > s["start"] for s in segs)
    assert all(segs[i]["end"] <= segs[i + 1]["start"] for i in range(len(segs) - 1))
    assert all(not s["enrolled"] and s["score"] is None for s in segs)
    assert all(s["speaker"].startswith("unknown-") for s in segs)
    names = [s["speaker"] for s in out["speakers"]]
    assert names == [f"unknown-{i}" for i in range(1, len(names) + 1)]
    assert segs[0]["speaker"] == "unknown-1"
    total = sum(s["seconds"] for s in out["speakers"])
    assert total == pytest.approx(sum(s["end"] - s["start"] for s in segs), abs=0.01)
    assert 8.0 < total < out["duration"]  # speech only, not the pauses
    assert not (tmp_path / "none.db").exists()  # read-only: no registry created


@needs_shared
def test_rttm_and_plot_files(talk, tiny_ckpt, tmp_path):
    rttm, png = tmp_path / "out.rttm", tmp_path / "plots" / "t.png"
    res = _track(
        talk, talk, "--model", tiny_ckpt, "--rttm", rttm, "--plot", png, "--num-speakers", "2"
    )
    assert res.exit_code == 0, res.output
    lines = rttm.read_text().splitlines()
    assert lines and all(line.startswith("SPEAKER talk 1 ") for line in lines)
    assert len({line.split()[7] for line in lines}) == 2  # --num-speakers 2
    assert lines[: len(lines) // 2] == lines[len(lines) // 2 :]  # both inputs written
    from PIL import Image

    for name in ("t-talk.png",):  # several files: one plot per file
        img = Image.open(tmp_path / "plots" / name)
        assert "2 speakers" in img.info["Title"] and "unknown-1" in img.info["Description"]
    text = res.stdout.splitlines()
    assert text[0].startswith(f"{talk}: ") and "2 speakers: unknown-1" in text[0]


@needs_shared
def test_bad_file_is_reported_and_the_others_tracked(talk, tiny_ckpt, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    res = _track(talk, bad, "--model", tiny_ckpt, "--json")
    assert res.exit_code == 2
    out = json.loads(res.stdout)
    assert out[1]["file"] == str(bad) and "not a readable audio file" in out[1]["error"]
    assert out[0]["segments"]


def test_bad_arguments_are_one_line_errors(tmp_path, write_wav):
    f = write_wav("x.wav", real_speech(0))
    res = _track(f, "--num-speakers", "2", "--max-speakers", "3")
    assert res.exit_code == 2 and "not both" in res.output
    res = _track(f, f, "--enroll-unknown", "unknown-1=Carol")
    assert res.exit_code == 2 and "exactly one FILE" in res.output
    res = _track(f, "--enroll-unknown", "Carol")
    assert res.exit_code == 2 and "VOICE=NAME" in res.output
    res = _track(f, "--rttm", tmp_path / "missing" / "x.rttm")  # before any model is loaded
    assert res.exit_code == 2
    assert res.output.strip().endswith("x.rttm: no such folder or a folder there")
    res = _track(f, "--rttm", tmp_path)
    assert res.exit_code == 2 and "cannot write" in res.output and "Traceback" not in res.output


@needs_shared
def test_window_frames_pooled_whole_equal_the_embedder(tiny_ckpt):
    from speakerid.audio.decode import AudioClip
    from speakerid.embedding.embedder import Embedder
    from speakerid.embedding.windows import FrameEmbedder
    from speakerid.service.guard import embed_checked

    emb = Embedder(tiny_ckpt)
    x = np.concatenate([real_speech(0), real_speech(1)])
    clip = AudioClip(x, "two.wav", SR, 1, "")
    ref = emb.embed_clips([clip])[0].vector
    _, whole = FrameEmbedder(emb).whole(x)
    assert float(ref @ whole) > COSINE_SAME
    long = AudioClip(np.tile(x, 9)[: 61 * SR], "long.wav", SR, 1, "")  # > 60 s: averaged pieces
    (got,), (check,) = embed_checked(emb, [long], 0.3)
    assert check.checked
    assert float(got.vector @ emb.embed_clips([long])[0].vector) > COSINE_SAME
