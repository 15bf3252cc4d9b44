"""Lossless backups: ``speakerid export DIR`` / ``speakerid import DIR`` and their refusals."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from speakerid import errors
from speakerid.cli import app
from speakerid.registry.backup import manifest_digest
from speakerid.registry.store import Registry
from speakerid.service.facade import SpeakerID

from .conftest import ROOT, unit_rows

CLIPS = ROOT / "data" / "clips"
runner = CliRunner()


def clip(speaker: str, i: int):
    return sorted((CLIPS / speaker).glob("*.opus"))[i]


@pytest.fixture
def model_copy(tmp_path, tiny_ckpt):
    """The tiny model under a path of its own, so a test can take it away."""
    path = tmp_path / "voice-m.pt"
    shutil.copyfile(tiny_ckpt, path)
    return path


@pytest.fixture
def source(tmp_path, model_copy):
    """Real speech for 3 speakers (metadata, an appended file), 1 imported vector, 2 thresholds."""
    with SpeakerID(db=tmp_path / "src.db", model=model_copy) as s:
        s.enroll("alice", [clip("so0003", 0), clip("so0003", 1)], metadata={"team": "red"})
        s.enroll("Zoë 张", [clip("so0044", 0)], metadata={"tags": ["x", "ü"], "age": 31})
        s.enroll("bob", [clip("so0092", 0), clip("so0092", 1)])
        s.enroll("alice", [clip("so0003", 2)], append=True, metadata={"level": 4})
        s.import_embeddings(["dave"], unit_rows(1, seed=5), ["dave.npy"])
        s.set_threshold(0.4321, "calibrated on people/ (EER)")
        s.set_threshold(2.75, "calibrated (AS-Norm)", asnorm=True)
        yield s


def _rows(db):
    """Everything stored, read with plain sqlite3: raw blobs, texts and timestamps."""
    with sqlite3.connect(db) as con:
        return (
            con.execute(
                "select model_name, model_ref, model_sha256, dim, threshold, threshold_source, "
                "threshold_asnorm, threshold_asnorm_source, created from registry"
            ).fetchall(),
            con.execute(
                "select name, metadata, voiceprint, created, updated from speakers order by name"
            ).fetchall(),
            con.execute(
                "select s.name, u.embedding, u.source, u.duration, u.audio_sha256, u.created "
                "from utterances u join speakers s on s.id = u.speaker_id order by s.name, u.id"
            ).fetchall(),
        )


def _speakerid(cwd, *args, pythonpath=()):
    """``python -m speakerid`` in a fresh process: offline, clean SPEAKERID_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPEAKERID_")}
    env["SPEAKERID_CACHE"] = os.environ["SPEAKERID_CACHE"]  # ONNX exports: once per run
    home = cwd / "fresh-home"
    env.update(
        SPEAKERID_HOME=str(home),
        SPEAKERID_OFFLINE="1",
        PYTHONPATH=os.pathsep.join([*map(str, pythonpath), str(ROOT)]),
    )
    return subprocess.run(
        [sys.executable, "-m", "speakerid", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_line_error(result, contains):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and contains in lines[0], lines
    assert "Traceback" not in result.output


def test_round_trip_in_a_fresh_offline_process_restores_everything(tmp_path, source, model_copy):
    r = _speakerid(tmp_path, "export", "bk", "--db", "src.db", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"directory": "bk", "speakers": 4, "utterances": 7}

    # No model anywhere: the file is gone, the home is empty, downloads are off, and torch
    # cannot even be imported in the importing process.
    away = model_copy.rename(tmp_path / "elsewhere.pt")
    blocker = tmp_path / "no-torch" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('speakerid import loaded torch')\n")
    r = _speakerid(
        tmp_path, "import", "bk", "--db", "other.db", "--json", pythonpath=[blocker.parent]
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {
        "directory": "bk",
        "model": "voice-m",
        "speakers": 4,
        "utterances": 7,
        "skipped": [],
        "replaced": [],
        "thresholds_restored": True,
        "bound": True,
    }
    assert not (tmp_path / "fresh-home" / "models").exists()

    src, dst = _rows(tmp_path / "src.db"), _rows(tmp_path / "other.db")
    assert dst == src  # binding, thresholds + sources, metadata, times, blobs: byte for byte
    binding, speakers, utts = dst
    assert binding[0][:8] == (
        "voice-m",
        str(model_copy),
        source.registry.binding().model_sha256,
        192,
        0.4321,
        "calibrated on people/ (EER)",
        2.75,
        "calibrated (AS-Norm)",
    )
    assert [s[0] for s in speakers] == ["Zoë 张", "alice", "bob", "dave"]
    assert json.loads(speakers[1][1]) == {"team": "red", "level": 4}
    assert speakers[1][3] != speakers[1][4]  # alice: created != updated (appended)
    assert [u[3] for u in utts[:1]] == [pytest.approx(2.845, abs=0.01)]  # so0044 clip 0
    assert all(u[4] and u[3] for u in utts[:-1]) and utts[-1][2:5] == ("dave.npy", None, None)

    with SpeakerID(db=tmp_path / "other.db") as restored:
        assert restored.list() == source.list()
        for name in ("alice", "Zoë 张", "bob", "dave"):
            assert restored.show(name) == source.show(name)
            assert restored.registry.voiceprint(name).tobytes() == (
                source.registry.voiceprint(name).tobytes()
            )
        assert restored.threshold() == (0.4321, "calibrated on people/ (EER)")
        assert restored.threshold(asnorm=True) == (2.75, "calibrated (AS-Norm)")
        assert restored.check_index().ok
        assert restored.info().generation == 1

        away.rename(model_copy)  # the model again, to compare answers on real speech
        probes = [clip("so0003", 3), clip("so0044", 3), clip("so0092", 3), clip("so0111", 0)]
        got = [r.to_dict() for r in restored.identify_many(probes, top_k=3)]
        want = [r.to_dict() for r in source.identify_many(probes, top_k=3)]
        assert got == want and got[0]["speaker"] == "alice" and len(got[0]["candidates"]) == 3
        assert restored.verify("bob", probes[2]) == source.verify("bob", probes[2])

        # duplicate detection survives: the same recording is refused / skipped as before
        for sid in (source, restored):
            with pytest.raises(
                errors.DuplicateEnrollmentError, match="already enrolled for speaker 'alice'"
            ):
                sid.enroll("eve", [clip("so0003", 0)])
            res = sid.enroll("alice", [clip("so0003", 1)], append=True)
            assert (res.added, res.skipped) == (0, [str(clip("so0003", 1))])


def test_backup_files_stay_readable_by_import_embeddings(tmp_path, source, model_copy):
    source.export(tmp_path / "bk")
    names = (tmp_path / "bk" / "names.txt").read_text(encoding="utf-8").splitlines()
    assert names == ["Zoë 张", "alice", "alice", "alice", "bob", "bob", "dave"]
    matrix = np.load(tmp_path / "bk" / "embeddings.npy")
    assert matrix.shape == (7, 192) and matrix.dtype == np.float32
    manifest = json.loads((tmp_path / "bk" / "speakers.json").read_text(encoding="utf-8"))
    assert (manifest["format"], manifest["version"]) == ("speakerid-backup", 1)
    assert [u["row"] for u in manifest["speakers"][1]["utterances"]] == [1, 2, 3]


def test_known_model_that_is_not_installed_binds_offline(tmp_path):
    from speakerid.embedding.weights import KNOWN_MODELS

    pinned = KNOWN_MODELS["eres2netv2"].sha256
    with SpeakerID(db=tmp_path / "a.db", model="eres2netv2") as a:  # pinned: no download
        a.import_embeddings(["ann", "ben"], unit_rows(2, seed=3))
        a.export(tmp_path / "bk")
    with SpeakerID(db=tmp_path / "b.db") as b:
        res = b.restore(tmp_path / "bk")
        assert (res.model, res.speakers, res.bound) == ("eres2netv2", 2, True)
        bound = b.registry.binding()
        assert (bound.model_name, bound.model_sha256, bound.dim) == ("eres2netv2", pinned, 192)
        assert b.identify_embeddings(unit_rows(2, seed=3)[1])[0].speaker == "ben"
        with pytest.raises(errors.ModelError):  # it really is not available here
            _ = b.embedder


def _refused_untouched(tmp_path, args, contains):
    """Run ``import`` and check a one-line error with nothing written to the target."""
    target = tmp_path / "target.db"
    before = _rows(target) if target.exists() else None
    index = target.with_name("target.db.index")
    index_before = index.read_bytes() if index.exists() else None
    _one_line_error(runner.invoke(app, ["import", *map(str, args), "--db", str(target)]), contains)
    if before is None:
        assert not target.exists()  # not even created
    else:
        assert _rows(target) == before
        assert (index.read_bytes() if index.exists() else None) == index_before


def test_damaged_or_foreign_backups_are_refused_with_nothing_written(tmp_path, source, model_copy):
    bk = tmp_path / "bk"
    source.export(bk)
    pristine = {p.name: p.read_bytes() for p in bk.iterdir()}

    def reset():
        for name, data in pristine.items():
            (bk / name).write_bytes(data)

    emb = bytearray(pristine["embeddings.npy"])
    emb[-3] ^= 0x01  # one bit of one float
    (bk / "embeddings.npy").write_bytes(bytes(emb))
    _refused_untouched(tmp_path, [bk], "embeddings.npy: damaged backup: sha256")
    reset()
    (bk / "names.txt").write_text("mallory\n" * 7)
    _refused_untouched(tmp_path, [bk], "names.txt: damaged backup")
    reset()
    (bk / "voiceprints.npy").unlink()
    _refused_untouched(tmp_path, [bk], "voiceprints.npy: missing or unreadable")
    reset()
    (bk / "speakers.json").write_bytes(pristine["speakers.json"][:-40])
    _refused_untouched(tmp_path, [bk], "damaged backup manifest")
    manifest = json.loads(pristine["speakers.json"])
    manifest["speakers"][1]["metadata"]["team"] = "blue"
    (bk / "speakers.json").write_text(json.dumps(manifest))
    _refused_untouched(tmp_path, [bk], "damaged backup manifest (its checksum does not match)")
    manifest = json.loads(pristine["speakers.json"])
    manifest["speakers"][2]["utterances"][0]["row"] = 99  # consistent checksum, bad content
    manifest["checksum"] = manifest_digest(manifest)
    (bk / "speakers.json").write_text(json.dumps(manifest))
    _refused_untouched(tmp_path, [bk], "utterance row 99 is out of range")
    vps = np.load(bk / "voiceprints.npy")
    np.save(bk / "voiceprints.npy", vps[[0, 2, 1, 3]])  # alice's and bob's swapped
    manifest = json.loads(pristine["speakers.json"])
    manifest["files"]["voiceprints.npy"] = hashlib.sha256(
        (bk / "voiceprints.npy").read_bytes()
    ).hexdigest()
    manifest["checksum"] = manifest_digest(manifest)
    (bk / "speakers.json").write_text(json.dumps(manifest))
    _refused_untouched(tmp_path, [bk], "voiceprint of 'alice' does not match its embeddings")
    reset()
    manifest = json.loads(pristine["speakers.json"])
    manifest["version"] = 2
    (bk / "speakers.json").write_text(json.dumps(manifest))
    _refused_untouched(tmp_path, [bk], "version 2 is not supported")
    legacy = {k: manifest[k] for k in ("model", "model_sha256", "dim", "speakers")}
    (bk / "speakers.json").write_text(json.dumps(legacy))
    _refused_untouched(tmp_path, [bk], "older speakerid")
    _refused_untouched(tmp_path, [tmp_path / "nowhere"], "no such backup folder")
    reset()
    # a target with content stays byte-identical too (database and index file)
    with SpeakerID(db=tmp_path / "target.db", model=model_copy) as t:
        t.enroll("erin", [clip("so0111", 0)])
    (bk / "embeddings.npy").write_bytes(bytes(emb))
    _refused_untouched(tmp_path, [bk], "damaged backup")


def test_registry_bound_to_another_model_is_refused(tmp_path, source):
    source.export(tmp_path / "bk")
    with SpeakerID(db=tmp_path / "target.db") as t:
        t._writable_registry().bind("other", "other.pt", "f" * 64, 192)
        t.import_embeddings(["x"], unit_rows(1, seed=9))
    _refused_untouched(
        tmp_path, [tmp_path / "bk"], "registry is bound to model 'other' (sha256 ffffffffffff)"
    )


def test_existing_speakers_refused_kept_or_replaced(tmp_path, source, model_copy):
    bk = tmp_path / "bk"
    source.export(bk)

    def target(name):
        with SpeakerID(db=tmp_path / name, model=model_copy) as t:
            t.enroll("bob", [clip("so0092", 2)], metadata={"mine": True})
            t.enroll("erin", [clip("so0111", 0)])
            t.set_threshold(0.3, "mine")
        return tmp_path / name

    target("target.db")
    _refused_untouched(
        tmp_path, [bk], "1 speaker of the backup already exists in the registry ('bob')"
    )
    _refused_untouched(tmp_path, [bk, "--skip-existing", "--replace"], "exclude each other")

    src_rows = _rows(tmp_path / "src.db")
    before = _rows(tmp_path / "target.db")
    args = ["import", str(bk), "--db", str(tmp_path / "target.db"), "--json", "--skip-existing"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert (out["speakers"], out["skipped"], out["thresholds_restored"]) == (3, ["bob"], False)
    after = _rows(tmp_path / "target.db")
    assert after[0] == before[0]  # the target keeps its own thresholds
    by_name = {s[0]: s for s in after[1]}
    assert by_name["bob"] == next(s for s in before[1] if s[0] == "bob")
    assert by_name["alice"] == next(s for s in src_rows[1] if s[0] == "alice")
    assert sorted(by_name) == ["Zoë 张", "alice", "bob", "dave", "erin"]

    db = target("replace.db")
    r = runner.invoke(app, ["import", str(bk), "--db", str(db), "--replace"])
    assert r.exit_code == 0 and "replaced 1 speaker: bob" in r.stdout, r.output
    after = _rows(db)
    assert [s for s in after[1] if s[0] != "erin"] == src_rows[1]
    assert [u for u in after[2] if u[0] != "erin"] == src_rows[2]
    with SpeakerID(db=db) as t:
        assert t.check_index().ok
        hits = t.registry.search(np.stack([t.registry.voiceprint(n) for n in ("bob", "erin")]), 1)
        assert [h[0].speaker for h in hits] == ["bob", "erin"]


def test_audio_enrolled_for_another_speaker_is_refused(tmp_path, source, model_copy):
    source.export(tmp_path / "bk")
    with SpeakerID(db=tmp_path / "target.db", model=model_copy) as t:
        t.enroll("zed", [clip("so0092", 1)])
    _refused_untouched(
        tmp_path, [tmp_path / "bk"], "of 'bob' in the backup is already enrolled for speaker 'zed'"
    )


def test_export_of_an_empty_registry_and_unwritable_folder(tmp_path, source):
    r = runner.invoke(app, ["export", str(tmp_path / "x"), "--db", str(tmp_path / "none.db")])
    _one_line_error(r, "no registry at")
    Registry(tmp_path / "empty.db").close()
    r = runner.invoke(app, ["export", str(tmp_path / "x"), "--db", str(tmp_path / "empty.db")])
    _one_line_error(r, "nothing to export")
    (tmp_path / "file").write_text("not a folder")
    r = runner.invoke(app, ["export", str(tmp_path / "file"), "--db", str(tmp_path / "src.db")])
    _one_line_error(r, "cannot create the backup folder")
