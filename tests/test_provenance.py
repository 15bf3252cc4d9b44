"""Vectors carry their model (issue 21, item 5): ``embed --output`` writes a ``NAME.npy.json``
sidecar beside each plain ``.npy``, and ``import-embeddings`` refuses another model's vectors
(exit 2, one line, registry byte-for-byte unchanged) and bare files whose model nobody named.
The rule lives in the library (``vector_files``, ``SpeakerID.import_embedding_files``); the
CLI only translates. The first tests run the real CLI in fresh processes, configured as users
configure it ($SPEAKERID_MODEL, relative paths, a clean $SPEAKERID_HOME)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from speakerid import errors
from speakerid.cli import app
from speakerid.embedding import weights
from speakerid.registry import vector_files
from speakerid.registry.store import Registry
from speakerid.service.facade import SpeakerID

from .conftest import CLIPS, unit_rows

A1, A2 = sorted((CLIPS / "so0003").glob("*.opus"))[:2]
B1, B2 = sorted((CLIPS / "so0044").glob("*.opus"))[:2]
DEMO_SHA = weights.sha256_file(weights.bundled_path("demo"))
runner = CliRunner()


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


def one_line_error(r, *fragments: str) -> str:
    """Exit 2 and exactly one ``error:`` line on stderr that holds every fragment."""
    code = r.returncode if hasattr(r, "returncode") else r.exit_code
    assert code == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (registry, index cache, journals) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def user(tmp_path, tiny_ckpt):
    """A user's folder: their model copied to m.pt and configured as SPEAKERID_MODEL=m.pt
    (relative), a clean home h/, and a registry bound to m.pt by one enrollment."""
    shutil.copy(tiny_ckpt, tmp_path / "m.pt")
    env = {"SPEAKERID_HOME": "h", "SPEAKERID_MODEL": "m.pt"}
    r = run(tmp_path, "enroll", "alice", A1, env=env)
    assert r.returncode == 0, r.stderr
    return tmp_path, env


def test_own_vectors_are_accepted_in_a_fresh_process(user):
    cwd, env = user
    r = run(cwd, "embed", B1, B2, "-o", "emb", "--json", env=env)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["provenance"] for row in rows] == [
        f"emb/{B1.stem}.npy.json",
        f"emb/{B2.stem}.npy.json",
    ]
    # the .npy stays a plain array any tool reads; the sidecar is JSON any tool reads
    vec = np.load(cwd / "emb" / f"{B1.stem}.npy")
    assert vec.shape == (192,) and vec.dtype == np.float32
    assert np.allclose(vec, rows[0]["embedding"], atol=1e-6)
    side = json.loads((cwd / "emb" / f"{B1.stem}.npy.json").read_text(encoding="utf-8"))
    m_sha = weights.sha256_file(cwd / "m.pt")
    assert side["format"] == "speakerid-embedding" and side["version"] == 1
    assert side["model"] == {"name": "m", "ref": str(cwd / "m.pt"), "sha256": m_sha, "dim": 192}
    npy = (cwd / "emb" / f"{B1.stem}.npy").read_bytes()
    assert side["npy_sha256"] == hashlib.sha256(npy).hexdigest() and side["shape"] == [192]
    assert (
        side["source"]["file"] == str(B1)
        and side["source"]["sha256"] == hashlib.sha256(B1.read_bytes()).hexdigest()
    )
    # a copy of the folder keeps the pair together; imported into the bound registry
    shutil.copytree(cwd / "emb", cwd / "copied")
    r = run(cwd, "import-embeddings", *sorted((cwd / "copied").glob("*.npy")), "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert [x["speaker"] for x in json.loads(r.stdout)] == [B1.stem, B2.stem]
    # the stored vectors are the very ones the model computes: identify finds B1 at ~1.0
    r = run(cwd, "identify", B1, "--json", "-t", "-1", env=env)
    assert r.returncode == 0, r.stderr
    best = json.loads(r.stdout)[0]["candidates"][0]
    assert best["speaker"] == B1.stem and best["score"] > 0.9999
    reg = Registry(cwd / "h" / "registry.db", create=False)
    assert reg.binding().model_sha256 == m_sha and len(reg.speakers()) == 3
    reg.close()


def test_another_models_vectors_are_refused_and_nothing_changes(user):
    cwd, env = user
    # vectors of the bundled demo model: same 192 dimensions, another network
    r = run(cwd, "embed", B1, "-o", "other", "--model", "demo", env={"SPEAKERID_HOME": "h2"})
    assert r.returncode == 0, r.stderr
    before = files_of(cwd / "h")
    # as configured ($SPEAKERID_MODEL=m.pt): the vectors are not the requested model's
    line = one_line_error(
        run(cwd, "import-embeddings", f"other/{B1.stem}.npy", env=env),
        f"the vectors of other/{B1.stem}.npy were made by model 'demo' (sha256 {DEMO_SHA[:12]})",
        "not by the requested model 'm'",
    )
    assert "not comparable" in line
    # without it: the registry's own model decides
    one_line_error(
        run(cwd, "import-embeddings", f"other/{B1.stem}.npy", env={"SPEAKERID_HOME": "h"}),
        "made by model 'demo'",
        "is bound to model 'm'",
        "embed the audio with the registry's model",
    )
    # naming the registry's model for them does not make them its vectors
    one_line_error(
        run(cwd, "import-embeddings", f"other/{B1.stem}.npy", "--model", "m.pt", env=env),
        f"other/{B1.stem}.npy was made by model 'demo'",
        f"(per {B1.stem}.npy.json), not by --model 'm'",
    )
    assert files_of(cwd / "h") == before  # byte for byte: database, index, journals


def test_bare_files_need_the_model_named(user):
    cwd, env = user
    # 3D-Speaker infer_sv.py writes plain (192,) arrays named after the wav, nothing else
    (cwd / "emb").mkdir()
    for i, name in enumerate(("bob", "carol")):
        np.save(cwd / "emb" / f"{name}.npy", unit_rows(1, seed=i)[0] * 3.0)
    before = files_of(cwd / "h")
    line = one_line_error(
        run(cwd, "import-embeddings", "emb/bob.npy", "emb/carol.npy", env=env),
        "emb/bob.npy and 1 more file carry no model (no bob.npy.json beside them",
        "3D-Speaker's infer_sv.py",
        "say which model made them with --model NAME_OR_PATH",
    )
    assert "$SPEAKERID_MODEL" not in line  # the variable says what the user runs, not this
    assert files_of(cwd / "h") == before
    r = run(cwd, "import-embeddings", "emb/bob.npy", "emb/carol.npy", "--model", "m.pt", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "imported 2 embeddings for 2 speakers\n"


# --- the library's rule, in process ---------------------------------------------------------
@pytest.fixture
def made(tmp_path, tiny_ckpt):
    """Provenances of the tiny model and of the bundled demo model (no network loaded)."""
    tiny = weights.identity(tiny_ckpt)
    return {
        "tiny": vector_files.Provenance(tiny.name, tiny.ref, tiny.sha256, 192),
        "demo": vector_files.Provenance("demo", "demo", DEMO_SHA, 192),
    }


def test_sidecar_round_trip_and_what_reading_refuses(tmp_path, made):
    vecs = unit_rows(3, seed=1)
    path = vector_files.save(tmp_path / "a.npy", vecs[0], made["tiny"])
    assert np.array_equal(np.load(path), vecs[0])
    batch = vector_files.read([path])
    assert batch.names == ["a"] and batch.models == [made["tiny"]]
    assert vector_files.made_by(batch, None) == made["tiny"]
    # a matrix with names: one sidecar for the whole file
    vector_files.save(tmp_path / "m.npy", vecs, made["tiny"])
    (tmp_path / "names.txt").write_text("x\ny\nx\n")
    batch = vector_files.read([tmp_path / "m.npy"], tmp_path / "names.txt")
    assert batch.names == ["x", "y", "x"] and batch.sources == ["m.npy[0]", "m.npy[1]", "m.npy[2]"]
    assert batch.models == [made["tiny"]]
    # files of two models in one import
    vector_files.save(tmp_path / "b.npy", vecs[1], made["demo"])
    with pytest.raises(errors.ModelMismatchError, match="were made by different models"):
        vector_files.made_by(vector_files.read([path, tmp_path / "b.npy"]), None)
    # a .npy replaced after its sidecar was written (e.g. by infer_sv.py)
    np.save(tmp_path / "b.npy", vecs[2])
    with pytest.raises(errors.InvalidInputError) as exc:
        vector_files.read([tmp_path / "b.npy"])
    assert str(exc.value) == (
        f"{tmp_path / 'b.npy'} does not match b.npy.json (its sha256 differs: the .npy changed "
        "after speakerid wrote it); delete b.npy.json and say which model made b.npy with --model"
    )
    # a damaged or foreign sidecar
    (tmp_path / "b.npy.json").write_text('{"format": "something else"}')
    with pytest.raises(errors.InvalidInputError, match="not a speakerid embedding provenance"):
        vector_files.read([tmp_path / "b.npy"])
    side = json.loads(vector_files.provenance_json(b"x", [192], made["tiny"]))
    side["version"] = 9
    (tmp_path / "b.npy.json").write_text(json.dumps(side))
    with pytest.raises(errors.InvalidInputError, match="newer speakerid .* upgrade speakerid"):
        vector_files.read([tmp_path / "b.npy"])
    with pytest.raises(errors.InvalidInputError, match="are not 192-dimensional"):
        vector_files.save(tmp_path / "c.npy", np.ones(64, np.float32), made["tiny"])


def test_python_api_follows_the_same_rule(tmp_path, tiny_ckpt, made):
    vecs = unit_rows(3, seed=2)
    np.save(tmp_path / "bare.npy", vecs[0])
    vector_files.save(tmp_path / "demo.npy", vecs[1], made["demo"])
    vector_files.save(tmp_path / "own.npy", vecs[2], made["tiny"])
    with SpeakerID(db=tmp_path / "r.db") as sid:
        # nothing is created by a refusal on a registry that does not exist yet
        with pytest.raises(errors.InvalidInputError, match="bare.npy carries no model"):
            sid.import_embedding_files([tmp_path / "bare.npy"])
        assert not (tmp_path / "r.db").exists()
        # a file that carries its model binds a new registry to it, offline
        res = sid.import_embedding_files([tmp_path / "own.npy"])
        assert [(r.speaker, r.added) for r in res] == [("own", 1)]
        assert sid.registry.binding().model_sha256 == made["tiny"].sha256
        with pytest.raises(errors.ModelMismatchError, match="bound to model 'tiny'"):
            sid.import_embedding_files([tmp_path / "demo.npy"])
        with pytest.raises(errors.ModelMismatchError, match="bound to model 'tiny'"):
            sid.import_embedding_files([tmp_path / "bare.npy"], model="demo")
        # arrays: model= names their model and is checked like a file's
        with pytest.raises(errors.ModelMismatchError, match="made by model 'demo'"):
            sid.import_embeddings(["x"], vecs[:1], model="demo")
        sid.import_embedding_files([tmp_path / "bare.npy"], model=tiny_ckpt, speaker="bob")
        sid.import_embeddings(["carol"], vecs[1:2], model=tiny_ckpt)
        assert [s.name for s in sid.list()] == ["bob", "carol", "own"]


def test_cli_bare_files_with_the_right_model_and_backups(tmp_path, tiny_ckpt):
    """In process: the CLI translates the library's refusals; an export's embeddings.npy
    carries its model too (embeddings.npy.json, covered by the backup's checksums)."""
    db, other = str(tmp_path / "r.db"), str(tmp_path / "other.db")
    np.save(tmp_path / "ann.npy", unit_rows(1, seed=5)[0])
    r = runner.invoke(app, ["import-embeddings", str(tmp_path / "ann.npy"), "--db", db])
    one_line_error(r, "ann.npy carries no model", "--model NAME_OR_PATH")
    assert not Path(db).exists()
    args = ["import-embeddings", str(tmp_path / "ann.npy"), "--db", db, "--model", str(tiny_ckpt)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and r.stdout == "imported 1 embedding for 1 speaker\n", r.output
    assert runner.invoke(app, ["export", str(tmp_path / "bk"), "--db", db]).exit_code == 0
    side = json.loads((tmp_path / "bk" / "embeddings.npy.json").read_text(encoding="utf-8"))
    assert side["model"]["sha256"] == weights.sha256_file(tiny_ckpt) and side["shape"] == [1, 192]
    # into a new registry: bound to the backup's model, offline, without --model
    bk = [str(tmp_path / "bk" / "embeddings.npy"), "--names", str(tmp_path / "bk" / "names.txt")]
    r = runner.invoke(app, ["import-embeddings", *bk, "--db", other, "--json"])
    assert r.exit_code == 0, r.output
    reg = Registry(other, create=False)
    assert reg.binding().model_sha256 == weights.sha256_file(tiny_ckpt)
    reg.close()
    # into a registry bound to another model: refused, nothing written
    demo_db = tmp_path / "demo" / "r.db"
    with SpeakerID(db=demo_db, model="demo") as sid:
        sid.import_embeddings(["zed"], unit_rows(1, seed=6))
    before = files_of(demo_db.parent)
    assert {"r.db", "r.db.index"} <= set(before)
    r = runner.invoke(app, ["import-embeddings", *bk, "--db", str(demo_db)])
    one_line_error(r, "embeddings.npy were made by model 'tiny'", "is bound to model 'demo'")
    assert files_of(demo_db.parent) == before


def test_an_older_export_names_the_model_its_vectors_need(tmp_path):
    from speakerid.registry.backup import read_backup

    legacy = {"model": "tiny", "model_sha256": "ab" * 32, "dim": 192, "speakers": []}
    (tmp_path / "speakers.json").write_text(json.dumps(legacy))
    with pytest.raises(errors.BackupError) as exc:
        read_backup(tmp_path)
    assert str(exc.value) == (
        f"{tmp_path}: an export of an older speakerid without a backup manifest; import its "
        f"vectors with speakerid import-embeddings {tmp_path / 'embeddings.npy'} --names "
        f"{tmp_path / 'names.txt'} --model MODEL, the model that made them: 'tiny' (sha256 "
        "abababababab)"
    )
