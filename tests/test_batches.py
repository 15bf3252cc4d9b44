"""Batches: a bad file costs only its own answer (identify/verify FILE..., DIR, - for stdin)."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from speakerid.audio.decode import AudioBytes, load_audio
from speakerid.cli import app
from speakerid.errors import AudioDecodeError, AudioFileNotFoundError, SpeakerNotFoundError
from speakerid.results import FileError, IdentifyResult

from .conftest import ROOT

CLIPS = ROOT / "data" / "clips"
runner = CliRunner()


@pytest.fixture
def speech(tmp_path):
    """Real speech (speechocean762 clips): two recordings of A, one of B, one of C."""
    picks = {
        "a1": "so0003/000030012.opus",
        "a2": "so0003/000030024.opus",
        "b1": "so0044/000440005.opus",
        "c1": "so0092/000920002.opus",
    }
    out = {}
    for key, rel in picks.items():
        out[key] = tmp_path / f"{key}.opus"
        shutil.copy(CLIPS / rel, out[key])
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"this is not audio" * 50)
    out["bad"] = bad
    out["missing"] = tmp_path / "missing.wav"
    return out


@pytest.fixture
def cli(tmp_path, tiny_ckpt, speech):
    """CLI on a registry with A (enrolled from a1) and B (from b1); C is never enrolled."""
    db = tmp_path / "batch.db"

    def run(*args, input=None):
        extra = ["--db", str(db), "--model", str(tiny_ckpt)]
        return runner.invoke(app, [*map(str, args), *extra], input=input)

    assert run("enroll", "A", speech["a1"], "--force").exit_code == 0
    assert run("enroll", "B", speech["b1"], "--force").exit_code == 0
    return run


def test_identify_json_keeps_every_good_answer_and_exits_2(cli, speech):
    r = cli("identify", speech["a1"], speech["bad"], speech["missing"], speech["b1"], "--json")
    assert r.exit_code == 2, r.output
    rows = json.loads(r.stdout)
    assert [row["file"] for row in rows] == [str(speech[k]) for k in ("a1", "bad", "missing", "b1")]
    assert set(rows[1]) == {"file", "error"} and set(rows[2]) == {"file", "error"}
    assert rows[1]["error"].startswith(f"{speech['bad']}: not a readable audio file")
    assert rows[2]["error"] == f"{speech['missing']}: no such file"
    # the others are answered exactly as if alone: an enrolled recording matches itself
    assert (rows[0]["speaker"], rows[3]["speaker"]) == ("A", "B")
    assert rows[0]["score"] == pytest.approx(1.0, abs=1e-5)
    alone = json.loads(cli("identify", speech["b1"], "--json").stdout)[0]
    assert rows[3] == alone
    assert r.stderr == ""  # JSON mode: the errors are in the array


def test_identify_text_prints_answers_and_one_error_line_per_bad_file(cli, speech):
    r = cli("identify", speech["a1"], speech["bad"], speech["b1"], speech["missing"])
    assert r.exit_code == 2
    out = [line.split("\t") for line in r.stdout.strip().splitlines()]
    assert [(row[0], row[1]) for row in out] == [(str(speech["a1"]), "A"), (str(speech["b1"]), "B")]
    assert r.stderr.strip().splitlines() == [
        f"error: {speech['bad']}: not a readable audio file (Format not recognised.)",
        f"error: {speech['missing']}: no such file",
    ]


def test_identify_exit_codes_failed_beats_unknown(cli, speech):
    # C was never enrolled: below a threshold of 1 it is unknown -> 1; with a bad file -> 2
    assert cli("identify", speech["a1"], speech["c1"], "-t", "1").exit_code == 1
    assert cli("identify", speech["c1"], speech["bad"], "-t", "1").exit_code == 2
    assert cli("identify", speech["a1"], speech["b1"]).exit_code == 0


def test_fail_fast_stops_at_the_first_bad_file(cli, speech, tmp_path):
    bad2 = tmp_path / "bad2.wav"
    bad2.write_bytes(b"\x00garbage" * 40)
    r = cli("identify", speech["a1"], speech["bad"], bad2, speech["b1"], "--fail-fast", "--json")
    assert r.exit_code == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {speech['bad']}: not a readable")
    r = cli("verify", "A", speech["a1"], bad2, speech["bad"], "--fail-fast")
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == [
        f"error: {bad2}: not a readable audio file (Format not recognised.)"
    ]


def test_identify_dir_expands_to_its_audio_files_recursively_sorted(cli, speech, tmp_path):
    d = tmp_path / "probes"
    (d / "sub").mkdir(parents=True)
    shutil.copy(speech["b1"], d / "sub" / "0-b.opus")
    shutil.copy(speech["a1"], d / "z-a.OPUS")
    shutil.copy(speech["bad"], d / "broken.wav")
    (d / "notes.txt").write_text("not audio, not a suffix we scan")
    r = cli("identify", d, speech["c1"], "--json", "-t", "0.999")
    assert r.exit_code == 2, r.output  # broken.wav
    rows = json.loads(r.stdout)
    assert [row["file"] for row in rows] == [
        str(d / "broken.wav"),
        str(d / "sub" / "0-b.opus"),
        str(d / "z-a.OPUS"),
        str(speech["c1"]),
    ]
    assert "error" in rows[0] and [row["speaker"] for row in rows[1:3]] == ["B", "A"]
    empty = tmp_path / "empty"
    (empty / "deep").mkdir(parents=True)
    (empty / "deep" / "readme.md").write_text("x")
    r = cli("identify", empty)
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.startswith(f"error: {empty}: no audio files in this directory")
    assert len(r.stderr.strip().splitlines()) == 1


def test_verify_many_files_gives_an_array_and_exit_codes(cli, speech):
    r = cli("verify", "A", speech["a1"], speech["c1"], "--json", "-t", "0.9999")
    assert r.exit_code == 1, r.output  # c1 rejected
    rows = json.loads(r.stdout)
    assert [(v["file"], v["speaker"], v["accepted"]) for v in rows] == [
        (str(speech["a1"]), "A", True),
        (str(speech["c1"]), "A", False),
    ]
    assert all(
        set(v) == {"speaker", "file", "score", "threshold", "accepted", "reason"} for v in rows
    )
    r = cli("verify", "A", speech["a1"], speech["bad"], speech["c1"], "--json", "-t", "-1")
    assert r.exit_code == 2  # failed beats rejected / accepted
    rows = json.loads(r.stdout)
    assert rows[1] == {
        "file": str(speech["bad"]),
        "error": f"{speech['bad']}: not a readable audio file (Format not recognised.)",
    }
    assert [rows[0]["accepted"], rows[2]["accepted"]] == [True, True]
    r = cli("verify", "A", speech["a1"], speech["b1"], "-t", "-1")
    assert r.exit_code == 0 and [line.split(":")[0] for line in r.stdout.splitlines()] == [
        "accepted",
        "accepted",
    ]


def test_verify_one_file_keeps_the_object_contract(cli, speech):
    r = cli("verify", "A", speech["a1"], "--json")
    v = json.loads(r.stdout)
    assert isinstance(v, dict) and v["file"] == str(speech["a1"]) and v["accepted"] is True
    r = cli("verify", "A", speech["bad"], "--json")  # one file: its error is the command's
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        f"error: {speech['bad']}: not a readable audio file (Format not recognised.)"
    ]


def test_errors_about_the_call_come_before_any_work(cli, speech):
    r = cli("verify", "nobody", speech["a1"], speech["bad"])
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == ["error: no speaker named 'nobody' in the registry"]
    r = cli("identify", speech["a1"], speech["bad"], "-t", "3", "--json")
    assert r.exit_code == 2 and r.stdout == "" and "[-1, 1]" in r.stderr


def test_stdin_dash_reads_the_audio_bytes(cli, speech):
    data = speech["b1"].read_bytes()
    r = cli("identify", speech["a1"], "-", "--json", input=data)
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [(row["file"], row["speaker"]) for row in rows] == [(str(speech["a1"]), "A"), ("-", "B")]
    assert rows[1]["score"] == pytest.approx(1.0, abs=1e-5)
    r = cli("verify", "B", "-", "--json", input=data)
    assert r.exit_code == 0 and json.loads(r.stdout)["file"] == "-"
    r = cli("identify", "-", speech["a1"], "--json", input=b"")
    assert r.exit_code == 2
    assert json.loads(r.stdout)[0] == {"file": "-", "error": "-: file is empty (0 bytes)"}
    r = cli("identify", "-", "-", input=data)
    assert r.exit_code == 2 and r.stderr.strip() == (
        "error: '-' (standard input) can be given only once"
    )


def test_library_collects_file_errors_and_reports_progress_per_file(sid, speech):
    sid.enroll("A", [speech["a1"]], force=True)
    files = [speech["a1"], speech["bad"], speech["b1"], speech["missing"], speech["a2"]]
    calls: list[int] = []
    out = sid.identify_many(files, on_progress=calls.append, fail_fast=False)
    assert calls == [1, 1, 1, 1, 1]
    assert [type(r) for r in out] == [IdentifyResult, FileError, IdentifyResult, FileError,
                                      IdentifyResult]  # fmt: skip
    assert out[3] == FileError(str(speech["missing"]), f"{speech['missing']}: no such file")
    assert out[3].to_dict() == {"file": str(speech["missing"]), "error": out[3].error}
    assert out[0].speaker == "A" and out[0].score == pytest.approx(1.0, abs=1e-5)
    # default (fail_fast): the Python API raises the first bad file's error, as before
    with pytest.raises(AudioDecodeError, match="bad.wav"):
        sid.identify_many(files)
    with pytest.raises(AudioFileNotFoundError):
        sid.identify(speech["missing"])
    calls.clear()
    got = sid.verify_many("A", files[:3], on_progress=calls.append, fail_fast=False)
    assert calls == [1, 1, 1] and isinstance(got[1], FileError) and got[0].accepted
    with pytest.raises(SpeakerNotFoundError):
        sid.verify_many("nobody", files, fail_fast=False)
    named = sid.identify_many([AudioBytes(speech["a1"].read_bytes(), "-")], fail_fast=False)
    assert named[0].file == "-" and named[0].speaker == "A"


def test_embedder_progress_is_per_file_across_chunks(tiny_ckpt, speech):
    from speakerid.embedding.embedder import Embedder

    emb = Embedder(tiny_ckpt)
    clips = [load_audio(speech[k]) for k in ("a1", "a2", "b1", "c1", "a1")]
    calls: list[int] = []
    done = emb.embed_many(clips, chunk=3, on_progress=calls.append)
    assert calls == [1] * 5  # not [3, 2]
    calls.clear()
    batched = emb.embed_many(clips, chunk=4, batch_size=3, on_progress=calls.append)
    assert calls == [1] * 5
    assert all(float(a.vector @ b.vector) > 0.9999 for a, b in zip(done, batched))
    mixed = [speech["a1"], speech["bad"], speech["b1"]]
    calls.clear()
    got = emb.embed_many(mixed, chunk=2, on_progress=calls.append, collect_errors=True)
    assert calls == [1, 1, 1] and isinstance(got[1], AudioDecodeError)
    assert (got[0].vector == done[0].vector).all() and (got[2].vector == done[2].vector).all()
    with pytest.raises(AudioDecodeError):
        emb.embed_many(mixed)
