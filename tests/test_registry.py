"""Registry semantics through the Python API: enroll, identify, verify, manage, index cache."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from speakerid import errors
from speakerid.registry.schema import SCHEMA_REVISION
from speakerid.registry.store import Registry
from speakerid.service.facade import SpeakerID

from .conftest import real_speech, unit_rows


def _state(sid):
    return sid.registry.generation(), sid.registry.counts(), [s.name for s in sid.list()]


def test_enroll_list_show_and_append(sid_any, voices):
    res = sid_any.enroll("alice", voices[:2])
    assert (res.speaker, res.created, res.added, res.utterances) == ("alice", True, 2, 2)
    assert [(s.name, s.utterances) for s in sid_any.list()] == [("alice", 2)]
    info = sid_any.show("alice")
    assert [u.source for u in info.details] == [str(v) for v in voices[:2]]
    assert info.details[0].duration == pytest.approx(len(real_speech(0)) / 16000)  # 3.36 s
    with pytest.raises(errors.SpeakerExistsError, match="use --append"):
        sid_any.enroll("alice", [voices[2]])
    res = sid_any.enroll("alice", [voices[2], voices[0]], append=True)  # voices[0] is a re-enroll
    assert (res.created, res.added, res.skipped, res.utterances) == (False, 1, [str(voices[0])], 3)
    vecs = sid_any.registry.utterance_embeddings("alice")
    want = vecs.mean(0) / np.linalg.norm(vecs.mean(0))
    np.testing.assert_allclose(sid_any.registry.voiceprint("alice"), want, atol=1e-6)


def test_same_audio_for_another_speaker_is_refused(sid_any, voices):
    sid_any.enroll("alice", [voices[0]])
    before = _state(sid_any)
    with pytest.raises(
        errors.DuplicateEnrollmentError, match="already enrolled for speaker 'alice'"
    ):
        sid_any.enroll("bob", [voices[1], voices[0]])
    assert _state(sid_any) == before


def test_bad_audio_leaves_registry_untouched(sid_any, voices, tmp_path):
    sid_any.enroll("alice", [voices[0]])
    before = _state(sid_any)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"garbage" * 50)
    for call in (
        lambda: sid_any.enroll("bob", [voices[1], bad]),
        lambda: sid_any.enroll("alice", [voices[1], bad], append=True),
        lambda: sid_any.enroll("carol", [voices[2], tmp_path / "missing.wav"]),
    ):
        with pytest.raises(errors.AudioError):
            call()
        assert _state(sid_any) == before
    assert sid_any.check_index().ok


@pytest.mark.parametrize("name", ["Zoë O'Brien", "张伟", "  spaced name  ", "a/b\\c"])
def test_unicode_and_spaced_names_round_trip(sid_any, voices, name):
    sid_any.enroll(name, [voices[0]])
    stored = name.strip()
    assert [s.name for s in sid_any.list()] == [stored]
    assert sid_any.identify(voices[0]).speaker == stored
    assert sid_any.verify(name, voices[0]).speaker == stored
    sid_any.rename(stored, stored + " 2")
    assert sid_any.show(stored + " 2").utterances == 1


@pytest.mark.parametrize("bad", ["", "   ", "tab\there", "x" * 201])
def test_invalid_names(sid, voices, bad):
    with pytest.raises(errors.InvalidNameError):
        sid.enroll(bad, [voices[0]])
    assert not sid.path.exists()  # nothing written, not even an empty registry


def test_empty_registry_and_unknown_speaker(sid_any, voices):
    with pytest.raises(errors.RegistryNotFoundError, match="no registry at .*enroll a speaker"):
        sid_any.identify(voices[0])
    sid_any.enroll("x", [voices[1]])
    sid_any.remove("x")
    with pytest.raises(errors.EmptyRegistryError, match="enroll speakers first"):
        sid_any.identify(voices[0])
    with pytest.raises(errors.SpeakerNotFoundError, match="no speaker named 'nobody'"):
        sid_any.verify("nobody", voices[0])
    sid_any.enroll("alice", [voices[0]])
    for call in (
        lambda: sid_any.verify("nobody", voices[0]),
        lambda: sid_any.remove("nobody"),
        lambda: sid_any.show("nobody"),
        lambda: sid_any.rename("nobody", "x"),
    ):
        with pytest.raises(errors.SpeakerNotFoundError):
            call()


def test_model_mismatch_is_refused(sid, voices, tmp_path):
    import torch

    from .conftest import FIXTURES

    sid.enroll("alice", [voices[0]])
    other = tmp_path / "other.pt"
    torch.save(
        torch.load(FIXTURES / "eres2netv2_w24s4ep4_tiny_reference.pt", weights_only=True)[
            "state_dict"
        ],
        other,
    )
    with SpeakerID(db=sid.registry.path, model=other) as s2:
        with pytest.raises(errors.ModelMismatchError, match="bound to model 'tiny'"):
            s2.identify(voices[0])
        with pytest.raises(errors.ModelMismatchError):
            s2.enroll("bob", [voices[1]])
    assert [s.name for s in sid.list()] == ["alice"]
    with pytest.raises(errors.InvalidInputError, match="has 64 dimensions"):
        sid.import_embeddings(["x"], np.ones((1, 64), np.float32))


def test_registry_remembers_its_model(sid_any, voices, tiny_ckpt):
    sid_any.enroll("alice", [voices[0]])
    with SpeakerID(db=sid_any.location) as s2:  # no --model: uses the bound one
        assert s2.identify(voices[0]).speaker == "alice"
        assert s2.embedder.sha256 == sid_any.embedder.sha256


def test_threshold_edges_and_precedence(sid_any, monkeypatch):
    vecs = unit_rows(3)
    sid_any.import_embeddings(["a", "b", "c"], vecs)
    probe = vecs[0] + 0.5 * unit_rows(1, seed=7)[0]
    score = sid_any.identify_embeddings(probe)[0].score
    assert 0.5 < score < 1.0
    # a checkpoint without a card: the official card's value, saying so
    default = (0.365, "default (official ERes2NetV2 card; calibrate this model)")
    assert sid_any.threshold() == default
    above = float(np.nextafter(score, 2.0))
    for t, accepted in [(score, True), (above, False), (-1.0, True), (1.0, False)]:
        res = sid_any.identify_embeddings(probe, top_k=2, threshold=t)[0]
        assert res.accepted is accepted and res.threshold == t
        assert res.speaker == ("a" if accepted else None)
        assert res.candidates[0].speaker == "a"  # still listed when unknown
    assert sid_any.identify_embeddings(vecs[1])[0].score == 1.0  # clipped, never above 1
    with pytest.raises(errors.InvalidInputError, match=r"in \[-1, 1\]"):
        sid_any.threshold(1.5)
    sid_any.set_threshold(0.5, "calibrated")
    assert sid_any.threshold() == (0.5, "calibrated")
    monkeypatch.setenv("SPEAKERID_THRESHOLD", "0.25")
    assert sid_any.threshold() == (0.25, "$SPEAKERID_THRESHOLD")
    assert sid_any.threshold(0.7) == (0.7, "argument")
    monkeypatch.setenv("SPEAKERID_THRESHOLD", "abc")
    with pytest.raises(errors.InvalidInputError, match="must be a number"):
        sid_any.threshold()


def test_open_set_identification_and_candidates(sid_any, voices):
    vecs = unit_rows(5, seed=3)
    sid_any.import_embeddings([f"s{i}" for i in range(5)], vecs)
    noisy = vecs[2] + 0.3 * unit_rows(1, seed=9)[0]
    cands = sid_any.registry.search(noisy[None], 3)[0]
    assert cands[0].speaker == "s2" and len(cands) == 3
    assert cands[0].score >= cands[1].score >= cands[2].score
    stranger = unit_rows(1, seed=42)[0]
    top = sid_any.registry.search(stranger[None], 2)[0]
    assert top[0].score < 0.365  # random 192-d directions are near-orthogonal


def test_identify_real_audio_open_set(sid_any, voices):
    sid_any.enroll("alice", [voices[0]])
    known = sid_any.identify(voices[0], top_k=3)
    assert (known.speaker, known.accepted) == ("alice", True)
    assert known.score == pytest.approx(1.0, abs=1e-5)
    strict = sid_any.identify(voices[1], threshold=1.0)
    assert strict.speaker is None and not strict.accepted
    assert [c.speaker for c in strict.candidates] == ["alice"]


def test_remove_deletes_from_database_and_index(sid):
    vecs = unit_rows(4, seed=5)
    sid.import_embeddings(["a", "b", "c", "d"], vecs)
    assert sid.remove("b") == 1
    assert [s.name for s in sid.list()] == ["a", "c", "d"]
    Registry(sid.path).close()
    with sqlite3.connect(sid.path) as con:
        assert con.execute("select count(*) from utterances").fetchone()[0] == 3
        blobs = [r[0] for r in con.execute("select embedding from utterances")]
    assert vecs[1].astype("<f4").tobytes() not in blobs
    hits = sid.registry.search(vecs[1][None], 4)[0]
    assert "b" not in [c.speaker for c in hits]
    idx = sid.registry.ensure_index()
    _, ids = idx.search(vecs[1][None], idx.ntotal)
    assert len(ids[0]) == 3 and sid.check_index().ok


def test_hnsw_index_removal_wipes_vectors_and_rescoring_is_exact(tmp_path, tiny_ckpt):
    import faiss

    with SpeakerID(db=tmp_path / "h.db", model=tiny_ckpt, index_kind="hnsw") as s:
        vecs = unit_rows(50, seed=11)
        s.import_embeddings([f"s{i}" for i in range(50)], vecs)
        assert s.registry.ensure_index().kind == "hnsw"
        s.remove("s7")
        idx = s.registry.ensure_index()
        stored = faiss.downcast_index(idx.index.index)
        labels = faiss.vector_to_array(idx.index.id_map)
        removed_pos = [i for i, lab in enumerate(labels) if lab == 8]  # id of s7 (1-based ids)
        assert removed_pos and not np.any(stored.reconstruct(removed_pos[0]))
        assert s.registry.search(vecs[7][None], 3)[0][0].speaker != "s7"
        got = s.registry.search(vecs[3][None], 1)[0][0]
        assert got.speaker == "s3" and got.score == pytest.approx(1.0, abs=1e-6)
        assert s.check_index().ok


def test_index_is_rebuilt_when_missing_corrupt_or_stale(sid_any):
    vecs = unit_rows(6, seed=1)
    sid_any.import_embeddings([f"s{i}" for i in range(3)], vecs[:3])
    path = sid_any.registry.index_path
    old = path.read_bytes()
    sid_any.import_embeddings([f"s{i}" for i in range(3, 6)], vecs[3:])
    for damage in (
        lambda: path.unlink(),
        lambda: path.write_bytes(b"junk"),
        lambda: path.write_bytes(old),
    ):  # old = stale generation
        damage()
        assert not sid_any.check_index().ok
        with SpeakerID(db=sid_any.location) as fresh:
            assert fresh.registry.search(vecs[5][None], 1)[0][0].speaker == "s5"
        assert sid_any.check_index().ok
    report = sid_any.rebuild_index()
    assert report.rebuilt and report.entries == 6


def test_export_import_round_trip(sid, tmp_path, tiny_ckpt):
    vecs = unit_rows(5, seed=2)
    sid.import_embeddings(["a", "a", "b", "c", "c"], vecs)
    summary = sid.export(tmp_path / "out")
    assert summary == {"directory": str(tmp_path / "out"), "speakers": 3, "utterances": 5}
    names = (tmp_path / "out" / "names.txt").read_text().split()
    matrix = np.load(tmp_path / "out" / "embeddings.npy")
    with SpeakerID(db=tmp_path / "copy.db", model=tiny_ckpt) as other:
        other.import_embeddings(names, matrix)
        for n in "abc":
            np.testing.assert_allclose(
                other.registry.voiceprint(n), sid.registry.voiceprint(n), atol=1e-6
            )


def test_schema_is_alembic_managed_and_head_matches_code(sid):
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from speakerid.registry.database import migrations_dir

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    assert ScriptDirectory.from_config(cfg).get_current_head() == SCHEMA_REVISION
    Registry(sid.path).close()
    with sqlite3.connect(sid.path) as con:
        version = con.execute("select version_num from alembic_version").fetchone()[0]
        assert version == SCHEMA_REVISION
        assert con.execute("pragma journal_mode").fetchone()[0] == "wal"


def test_not_a_database_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(errors.RegistryCorruptError, match="not a usable registry database"):
        SpeakerID(db=bad).list()


def test_wheel_ships_migrations(tmp_path):
    """A non-editable install must be able to create databases: the wheel carries migrations."""
    import subprocess
    import sys
    import zipfile

    from .conftest import ROOT

    pytest.importorskip("setuptools")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("speakerid_eres2net-*.whl"))  # the distribution name
    names = zipfile.ZipFile(wheel).namelist()
    for f in (
        "speakerid/migrations/env.py",
        "speakerid/migrations/script.py.mako",
        "speakerid/migrations/versions/0001_initial.py",
        "speakerid/registry/store.py",
    ):
        assert f in names


def test_old_database_is_upgraded_in_place_with_data_intact(tmp_path):
    """A registry created at revision 0001 is migrated to head on open, keeping its rows."""
    from sqlalchemy import create_engine

    from speakerid.registry.database import upgrade
    from speakerid.registry.store import to_blob

    path = tmp_path / "old.db"
    engine = create_engine(f"sqlite:///{path}")
    upgrade(engine, "0001")
    vec = unit_rows(1)[0]
    with sqlite3.connect(path) as con:
        con.execute(
            "insert into registry values (1, 'm', 'm', ?, 192, 0.4, 'old', 1, "
            "'2026-01-01 00:00:00')",
            ("a" * 64,),
        )
        con.execute(
            "insert into speakers values (1, 'alice', NULL, ?, '2026-01-01 00:00:00', "
            "'2026-01-01 00:00:00')",
            (to_blob(vec),),
        )
        con.execute(
            "insert into utterances values (1, 1, ?, 'a.wav', 2.0, NULL, '2026-01-01 00:00:00')",
            (to_blob(vec),),
        )
    engine.dispose()
    with SpeakerID(db=path) as sid:
        assert [s.name for s in sid.list()] == ["alice"]
        assert sid.threshold() == (0.4, "old")
        assert sid.identify_embeddings(vec)[0].speaker == "alice"
        sid.set_threshold(1.7, "calibrated", asnorm=True)
        assert sid.threshold(asnorm=True) == (1.7, "calibrated")
    with sqlite3.connect(path) as con:
        version = con.execute("select version_num from alembic_version").fetchone()[0]
        assert version == SCHEMA_REVISION


def test_pq_index_is_exact_after_refine_and_purges_removed_speakers(db_url, tiny_ckpt):
    import faiss

    from speakerid.registry.index import choose_kind

    assert choose_kind(99_999) == "flat" and choose_kind(100_000) == "pq"
    vecs = unit_rows(400, seed=21)
    names = [f"s{i}" for i in range(400)]
    with SpeakerID(db=db_url, model=tiny_ckpt, index_kind="pq") as s:
        s.import_embeddings(names, vecs)
        idx = s.registry.ensure_index()
        assert idx.kind == "pq" and idx.ntotal == 400
        hits = s.registry.search(vecs[[3, 250]], 2)
        assert [h[0].speaker for h in hits] == ["s3", "s250"]
        assert hits[0][0].score == pytest.approx(1.0, abs=1e-6)
        exact = np.sort(vecs @ vecs[3])[::-1][1]
        assert hits[0][1].score == pytest.approx(float(exact), abs=1e-6)
        # appending to a speaker leaves a zeroed stale entry, found and dropped by re-scoring
        s.import_embeddings(["s5"], unit_rows(1, seed=99), append=True)
        idx = s.registry.ensure_index()
        assert idx.stale == 1 and idx.ntotal == 401
        # removing a speaker compacts: no code or vector of it remains in the index
        s.remove("s7")
        idx = s.registry.ensure_index()
        labels = faiss.vector_to_array(idx.index.id_map)
        assert idx.stale == 0 and idx.ntotal == 399 and 8 not in labels  # s7 has id 8
        assert s.registry.search(vecs[7][None], 3)[0][0].speaker != "s7"
        assert s.check_index().ok
    with SpeakerID(db=db_url, index_kind="pq") as s:  # reopened from the file
        idx = s.registry.ensure_index()
        assert idx.kind == "pq" and faiss.downcast_index(idx.index.index).k_factor == 8
        assert s.identify_embeddings(vecs[100])[0].speaker == "s100"


def test_index_kind_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEAKERID_INDEX", "pq")
    Registry(tmp_path / "e.db").close()
    with SpeakerID(db=tmp_path / "e.db") as s:
        assert s.registry.index_kind == "pq"
    monkeypatch.setenv("SPEAKERID_INDEX", "ivf")
    with pytest.raises(errors.InvalidInputError, match=r"\$SPEAKERID_INDEX='ivf': use one of"):
        SpeakerID(db=tmp_path / "e.db")
