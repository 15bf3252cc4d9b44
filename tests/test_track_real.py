"""Speaker tracking end to end with the real-voice test asset: a short two-person conversation
built from data/clips is named where each person speaks; an unknown voice can be enrolled from
it; enroll and identify guard against recordings with two voices."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from speakerid.cli import app

from .conftest import CLIPS, TEST_MODEL

runner = CliRunner()
SR = 16000
pytestmark = pytest.mark.skipif(not TEST_MODEL.is_file(), reason=f"{TEST_MODEL} not found")

A, B = "so0092", "so0111"  # two voices the asset tells apart on these clips


def clip(speaker: str, i: int) -> np.ndarray:
    files = sorted((CLIPS / speaker).glob("*.opus"))
    x, rate = sf.read(files[i], dtype="float32")
    assert rate == SR
    return x


@pytest.fixture
def conversation(write_wav):
    """A, B, A, B taking turns (clips 2 and 3 of each), 0.5 s pauses -> (file, turns)."""
    gap = np.zeros(SR // 2, np.float32)
    parts, turns, t = [], [], 0
    for spk, i in ((A, 2), (B, 2), (A, 3), (B, 3)):
        x = clip(spk, i)
        parts += [x, gap]
        turns.append((spk, t / SR, (t + len(x)) / SR))
        t += len(x) + len(gap)
    return write_wav("conversation.wav", np.concatenate(parts)), turns


def _enroll(db, name, speaker, idx):
    files = [str(sorted((CLIPS / speaker).glob("*.opus"))[i]) for i in idx]
    res = runner.invoke(app, ["enroll", name, *files, "--db", str(db), "--model", str(TEST_MODEL)])
    assert res.exit_code == 0, res.output


def _speaker_at(segments, t):
    return next((s["speaker"] for s in segments if s["start"] <= t < s["end"]), None)


def test_enrolled_voices_are_named_where_they_speak(conversation, tmp_path):
    path, turns = conversation
    db = tmp_path / "reg.db"
    _enroll(db, "Alice", A, [0, 1])  # enrolled from other recordings than the conversation's
    _enroll(db, "Bob", B, [0, 1])
    res = runner.invoke(app, ["track", str(path), "--db", str(db), "--json"])
    assert res.exit_code == 0, res.output
    (out,) = json.loads(res.stdout)
    assert {s["speaker"] for s in out["speakers"]} == {"Alice", "Bob"}
    assert all(s["enrolled"] for s in out["speakers"])
    assert out["threshold"] == pytest.approx(0.2222)
    name = {A: "Alice", B: "Bob"}
    for spk, start, end in turns:  # the middle of every turn carries the right name
        assert _speaker_at(out["segments"], (start + end) / 2) == name[spk]
    for s in out["segments"]:
        assert s["score"] >= 0.2222


def test_unknown_voice_is_enrolled_from_the_conversation(conversation, tmp_path):
    path, turns = conversation
    db = tmp_path / "reg.db"
    _enroll(db, "Bob", B, [0, 1])
    res = runner.invoke(
        app, ["track", str(path), "--db", str(db), "--enroll-unknown", "unknown-1=Alice", "--json"]
    )
    assert res.exit_code == 0, res.output
    (out,) = json.loads(res.stdout)
    first = (turns[0][1] + turns[0][2]) / 2
    assert _speaker_at(out["segments"], first) == "unknown-1"  # Alice speaks first
    assert _speaker_at(out["segments"], (turns[1][1] + turns[1][2]) / 2) == "Bob"
    (enrolled,) = out["enrolled_voices"]
    assert enrolled["speaker"] == "Alice" and enrolled["created"] and enrolled["added"] == 1
    assert enrolled["quality"][0]["file"] == f"{path}#unknown-1"
    show = json.loads(runner.invoke(app, ["show", "Alice", "--db", str(db), "--json"]).stdout)
    assert show["utterances"] == 1
    # the new voiceprint names Alice in the same conversation now
    again = runner.invoke(app, ["track", str(path), "--db", str(db), "--json"])
    segs = json.loads(again.stdout)[0]["segments"]
    assert _speaker_at(segs, first) == "Alice"
    # a voice that is not an unknown one of this file is refused, nothing enrolled
    bad = runner.invoke(
        app, ["track", str(path), "--db", str(db), "--enroll-unknown", "unknown-9=Zed"]
    )
    assert bad.exit_code == 2 and "unknown-9: no such unknown voice" in bad.output
    listed = json.loads(runner.invoke(app, ["list", "--db", str(db), "--json"]).stdout)
    assert sorted(s["name"] for s in listed) == ["Alice", "Bob"]


@pytest.fixture
def two_voices(write_wav):
    """so0003 then so0044 (two clips each, 0.3 s pauses): the second voice holds ~46 %."""
    gap = np.zeros(int(0.3 * SR), np.float32)
    parts = [
        clip("so0003", 0),
        gap,
        clip("so0003", 1),
        gap,
        clip("so0044", 0),
        gap,
        clip("so0044", 1),
    ]
    return write_wav("two.wav", np.concatenate(parts))


@pytest.fixture
def one_voice(write_wav):
    """Four clips of so0044 joined (9.6 s of speech): one voice, long enough to be checked."""
    gap = np.zeros(int(0.3 * SR), np.float32)
    return write_wav(
        "one.wav", np.concatenate([p for i in range(4) for p in (clip("so0044", i), gap)])
    )


def test_enroll_refuses_a_recording_with_two_voices(two_voices, one_voice, tmp_path):
    db = str(tmp_path / "reg.db")
    model = ["--db", db, "--model", str(TEST_MODEL)]
    res = runner.invoke(app, ["enroll", "Pat", str(two_voices), *model])
    assert res.exit_code == 2
    line = res.output.strip()
    assert "\n" not in line
    assert line.startswith(f"error: several speakers in {two_voices}: a second voice holds 4")
    assert "% of the speech" in line and "--force" in line
    assert not (tmp_path / "reg.db").exists()  # nothing written
    forced = runner.invoke(app, ["enroll", "Pat", str(two_voices), "--force", *model])
    assert forced.exit_code == 0, forced.output
    single = runner.invoke(app, ["enroll", "Bob", str(one_voice), *model])
    assert single.exit_code == 0, single.output  # checked (9.6 s of speech) and accepted


def test_identify_says_several_speakers_and_points_to_track(two_voices, one_voice, tmp_path):
    db = str(tmp_path / "reg.db")
    enrolled = runner.invoke(
        app, ["enroll", "Bob", str(one_voice), "--db", db, "--model", str(TEST_MODEL)]
    )
    assert enrolled.exit_code == 0, enrolled.output
    res = runner.invoke(app, ["identify", str(two_voices), str(one_voice), "--db", db, "--json"])
    assert res.exit_code == 1, res.output
    mixed, single = json.loads(res.stdout)
    assert mixed["speaker"] is None and mixed["accepted"] is False and mixed["candidates"] == []
    assert mixed["score"] == -1.0
    assert mixed["reason"].startswith(f"several speakers in {two_voices}: a second voice holds")
    assert mixed["reason"].endswith("use speakerid track to see who speaks when")
    assert single["reason"] is None and single["speaker"] == "Bob"
    text = runner.invoke(app, ["identify", str(two_voices), "--db", db])
    assert text.exit_code == 1 and "unknown\t(several speakers in" in text.stdout


def test_verify_and_compare_reject_a_recording_with_two_voices(two_voices, one_voice, tmp_path):
    """A second voice for 46 % of the speech: "is this Bob?" gets no yes, whatever Bob's part
    scores, and compare scores nothing; the one-voice recording is still accepted."""
    db = str(tmp_path / "reg.db")
    enrolled = runner.invoke(
        app, ["enroll", "Bob", str(one_voice), "--db", db, "--model", str(TEST_MODEL)]
    )
    assert enrolled.exit_code == 0, enrolled.output
    res = runner.invoke(
        app, ["verify", "Bob", str(two_voices), str(one_voice), "--db", db, "--json"]
    )
    assert res.exit_code == 1, res.output
    mixed, single = json.loads(res.stdout)
    assert mixed["accepted"] is False and mixed["score"] == -1.0
    assert mixed["reason"].startswith(f"several speakers in {two_voices}: a second voice holds 4")
    assert mixed["reason"].endswith("use speakerid track to see who speaks when")
    assert single["accepted"] is True and single["reason"] is None and single["score"] > 0.9
    text = runner.invoke(app, ["verify", "Bob", str(two_voices), "--db", db])
    assert text.exit_code == 1
    assert f"rejected: {two_voices} vs Bob: several speakers in {two_voices}" in text.stdout
    pair = runner.invoke(app, ["compare", str(one_voice), str(two_voices), "--db", db, "--json"])
    assert pair.exit_code == 1, pair.output
    out = json.loads(pair.stdout)
    assert out["accepted"] is False and out["score"] == -1.0
    assert out["reason"].startswith(f"several speakers in {two_voices}: a second voice holds")
    same = runner.invoke(app, ["compare", str(one_voice), str(one_voice), "--db", db, "--json"])
    assert same.exit_code == 0 and json.loads(same.stdout)["reason"] is None


def test_verify_guard_as_users_configure_it(two_voices, one_voice, tmp_path):
    """A fresh process, the model from the environment, relative paths, a clean home; the
    registry is the default one and AS-Norm scoring is asked for: still no yes."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    work = tmp_path / "work"
    people = work / "people"
    cohort = [sorted((CLIPS / s).glob("*.opus"))[0] for s in ("so0003", "so0120", "so0111")]
    for name, src in [("Bob", one_voice)] + [(f"C{i}", f) for i, f in enumerate(cohort)]:
        (people / name).mkdir(parents=True)
        shutil.copy(src, people / name / Path(src).name)
    shutil.copy(two_voices, work / "two.wav")
    shutil.copy(one_voice, work / "bob.wav")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPEAKERID_")}
    env.update(SPEAKERID_HOME="home", SPEAKERID_MODEL=str(TEST_MODEL), SPEAKERID_OFFLINE="1")
    env["SPEAKERID_CACHE"] = os.environ["SPEAKERID_CACHE"]  # the run's ONNX exports (conftest)

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "speakerid", *args],
            capture_output=True, text=True, env=env, cwd=work, timeout=300,
        )  # fmt: skip

    enrolled = cli("enroll-dir", "people")
    assert enrolled.returncode == 0, enrolled.stderr
    res = cli("verify", "Bob", "two.wav", "--asnorm", "--threshold", "2.0")
    assert res.returncode == 1, res.stderr
    assert res.stdout.startswith("rejected: two.wav vs Bob: several speakers in two.wav")
    ok = cli("verify", "Bob", "bob.wav", "--asnorm", "--threshold", "2.0")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert (work / "home").is_dir()
