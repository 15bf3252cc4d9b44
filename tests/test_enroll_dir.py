"""`enroll-dir`: the same quality gates and report as `enroll`; re-runs skip enrolled files
(by sha256 of the file bytes) before decoding or embedding them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from speakerid.cli import app
from speakerid.embedding.embedder import Embedder

from .conftest import noise_floor, real_speech

runner = CliRunner()


@pytest.fixture
def embedded(monkeypatch):
    """Sources of every clip handed to the embedder during the test."""
    seen: list[str] = []
    original = Embedder.embed_many

    def counting(self, clips, *a, **kw):
        seen.extend(c.source for c in clips)
        return original(self, clips, *a, **kw)

    monkeypatch.setattr(Embedder, "embed_many", counting)
    return seen


@pytest.fixture
def people(tmp_path, write_wav):
    """ann: two real recordings; ben: one real recording and one with 0.3 s of speech."""
    word = real_speech(2)[16000 : 16000 + 4800]  # 0.3 s from the middle of an utterance
    short = noise_floor(3.0)
    short[24000 : 24000 + len(word)] += word
    files = {
        "ann/a1.wav": real_speech(0),
        "ann/a2.wav": real_speech(1),
        "ben/b1.wav": real_speech(3),
        "ben/short.wav": short,
    }
    for name, x in files.items():
        write_wav(f"people/{name}", x)
    return tmp_path / "people"


@pytest.fixture
def cli(tmp_path, tiny_ckpt):
    def run(*args, db="cli.db", model=True):
        extra = ["--db", str(tmp_path / db)] + (["--model", str(tiny_ckpt)] if model else [])
        return runner.invoke(app, [*map(str, args), *extra])

    return run


def _speakers(cli, db="cli.db"):
    return {
        r["name"]: r["utterances"]
        for r in json.loads(cli("list", "--json", db=db, model=False).stdout)
    }


def test_short_speech_is_refused_like_enroll_refuses_it(cli, people, embedded, tmp_path):
    short = people / "ben" / "short.wav"
    r = cli("enroll", "ben", short)
    assert r.exit_code == 2
    enroll_error = r.stderr.strip()
    assert (
        enroll_error.startswith(f"error: {short}: only 0.") and "(minimum 1.00 s)" in enroll_error
    )
    r = cli("enroll-dir", people)
    assert r.exit_code == 2 and r.stderr.strip() == enroll_error  # same gate, same message
    assert embedded == []  # every file is checked before any is embedded
    assert not (tmp_path / "cli.db").exists()  # all-or-nothing: not even a registry created


def test_skip_errors_reports_refused_files_and_the_quality_of_the_rest(cli, people):
    r = cli("enroll-dir", people, "--skip-errors", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [(s["speaker"], s["added"], s["utterances"]) for s in out["speakers"]] == [
        ("ann", 2, 2),
        ("ben", 1, 1),
    ]
    assert len(out["errors"]) == 1 and "short.wav: only 0." in out["errors"][0]
    ann, ben = out["speakers"]
    assert [q["file"] for q in ann["quality"]] == [
        str(people / "ann" / f) for f in ("a1.wav", "a2.wav")
    ]
    assert all(q["speech_seconds"] > 2.0 and q["snr_db"] > 25 for q in ann["quality"])
    assert [q["file"] for q in ben["quality"]] == [str(people / "ben" / "b1.wav")]
    assert ann["warnings"] == [] and ann["skipped"] == []
    r = cli("enroll-dir", people, "--skip-errors")  # text: refused files on stderr
    assert r.exit_code == 2 and "already exists; use --append" in r.stderr


def test_force_and_min_speech_override_the_gate_and_warn(cli, people):
    r = cli("enroll-dir", people, "--force", "--json")
    assert r.exit_code == 0, r.output
    ben = json.loads(r.stdout)["speakers"][1]
    assert ben["added"] == 2 and ben["quality"][1]["speech_seconds"] < 1.0
    assert any("short.wav: short speech" in w for w in ben["warnings"])
    assert "warning: " in r.stderr and "short.wav: short speech" in r.stderr
    r = cli("enroll-dir", people, "--min-speech", "0.2", "--json", db="other.db")
    assert r.exit_code == 0 and _speakers(cli, "other.db") == {"ann": 2, "ben": 2}


def test_vad_trims_silence_before_embedding(cli, people):
    (people / "ben" / "short.wav").unlink()
    r = cli("enroll-dir", people, "--vad", "--json")
    assert r.exit_code == 0, r.output
    ann = json.loads(r.stdout)["speakers"][0]
    shown = json.loads(cli("show", "ann", "--json", model=False).stdout)["sources"]
    for q, stored in zip(ann["quality"], shown):  # embedded: the speech + 2 x 270 ms more pad
        assert stored["duration"] == pytest.approx(q["speech_seconds"] + 0.54, abs=1e-3)
        assert stored["duration"] < q["duration"] - 0.2


def test_rerun_skips_enrolled_files_before_embedding(cli, people, embedded, write_wav):
    (people / "ben" / "short.wav").unlink()
    assert cli("enroll-dir", people).exit_code == 0
    assert sorted(embedded) == sorted(str(p) for p in people.rglob("*.wav"))
    embedded.clear()

    r = cli("enroll-dir", people)  # without --append: refused before any embedding
    assert r.exit_code == 2 and "speaker 'ann' already exists; use --append" in r.stderr
    r = cli("enroll-dir", people, "--append", "--json")
    assert r.exit_code == 0, r.output
    assert embedded == []  # nothing decoded into the network
    out = json.loads(r.stdout)["speakers"]
    assert [(s["speaker"], s["created"], s["added"], s["utterances"]) for s in out] == [
        ("ann", False, 0, 2),
        ("ben", False, 0, 1),
    ]
    assert out[0]["skipped"] == [str(people / "ann" / "a1.wav"), str(people / "ann" / "a2.wav")]
    r = cli("enroll-dir", people, "--append")
    assert "unchanged ann: 0 new, 2 utterances in total" in r.stdout
    assert f"skipped {people / 'ben' / 'b1.wav'} (already enrolled)" in r.stdout

    new = write_wav("people/ann/a3.wav", real_speech(4))
    shutil.copy(people / "ann" / "a1.wav", people / "ann" / "copy-of-a1.wav")
    r = cli("enroll-dir", people, "--append", "--json")
    assert r.exit_code == 0 and embedded == [str(new)]  # only the new recording
    ann = json.loads(r.stdout)["speakers"][0]
    assert (ann["added"], ann["utterances"]) == (1, 3)
    assert str(people / "ann" / "copy-of-a1.wav") in ann["skipped"]  # same bytes as a1.wav
    assert _speakers(cli) == {"ann": 3, "ben": 1}


def test_a_file_enrolled_for_another_speaker_is_refused_before_embedding(
    cli, people, embedded, write_wav
):
    (people / "ben" / "short.wav").unlink()
    assert cli("enroll-dir", people).exit_code == 0
    embedded.clear()
    shutil.copy(people / "ann" / "a1.wav", people / "ben" / "stolen.wav")
    r = cli("enroll-dir", people, "--append")
    assert r.exit_code == 2 and embedded == []
    assert r.stderr.strip() == (
        f"error: {people / 'ben' / 'stolen.wav'} is already enrolled for speaker 'ann'"
    )
    assert _speakers(cli) == {"ann": 2, "ben": 1}


def test_registry_lists_enrolled_hashes(sid, voices):
    from speakerid.audio.decode import file_sha256

    sid.enroll("alice", voices[:2])
    hashes = [file_sha256(v) for v in voices[:3]]
    assert sid.registry.enrolled_hashes(hashes + [None, ""]) == {
        hashes[0]: "alice",
        hashes[1]: "alice",
    }
    assert sid.registry.enrolled_hashes([]) == {}
    assert np.all([len(h) == 64 for h in hashes])


@pytest.fixture
def decode_vad_calls(monkeypatch):
    """Sources decoded and the number of Silero VAD runs during the test."""
    from speakerid.audio import decode as audio
    from speakerid.audio import vad

    calls = {"decoded": [], "vad": 0}
    real_decode, real_probs = audio.decode, vad.speech_probs

    def decode(data, name="<bytes>"):
        calls["decoded"].append(name)
        return real_decode(data, name)

    def speech_probs(samples):
        calls["vad"] += 1
        return real_probs(samples)

    monkeypatch.setattr(audio, "decode", decode)
    monkeypatch.setattr(vad, "speech_probs", speech_probs)
    return calls


def _stored(db):
    from speakerid.service.facade import SpeakerID

    with SpeakerID(db=db) as sid:
        _, vectors, names = sid.registry.all_voiceprints()
        return names, vectors, [(u.source, u.duration) for n in names for u in sid.show(n).details]


def test_each_file_is_decoded_and_gated_once(cli, people, decode_vad_calls, monkeypatch, tmp_path):
    """The check of every file and the embedding share one decode and one gate (VAD) per
    file; the second VAD run is the multi-speaker guard's on the clip it embeds. Beyond the
    memory budget a file is decoded again, but not gated again, and enrolls the same."""
    from speakerid.service import enrollment

    (people / "ben" / "short.wav").unlink()
    files = sorted(str(p) for p in people.rglob("*.wav"))
    r = cli("enroll-dir", people, "--vad", "--json")
    assert r.exit_code == 0, r.output
    assert sorted(decode_vad_calls["decoded"]) == files  # was: every file twice
    assert decode_vad_calls["vad"] == 2 * len(files)  # was 3: the gate ran twice

    decode_vad_calls["decoded"].clear()
    decode_vad_calls["vad"] = 0
    monkeypatch.setattr(enrollment, "KEEP_SECONDS", 0.0)  # nothing kept between the phases
    r2 = cli("enroll-dir", people, "--vad", "--json", db="budget.db")
    assert r2.exit_code == 0, r2.output
    assert sorted(decode_vad_calls["decoded"]) == sorted(files * 2)
    assert decode_vad_calls["vad"] == 2 * len(files)
    assert json.loads(r2.stdout) == json.loads(r.stdout)
    (names, vectors, sources), (names2, vectors2, sources2) = (
        _stored(tmp_path / "cli.db"),
        _stored(tmp_path / "budget.db"),
    )
    assert names == names2 == ["ann", "ben"] and sources == sources2
    whole = {
        q["file"]: q["duration"] for s in json.loads(r.stdout)["speakers"] for q in s["quality"]
    }
    assert all(d < whole[f] - 0.2 for f, d in sources)  # trimmed by --vad in both
    np.testing.assert_array_equal(vectors, vectors2)
