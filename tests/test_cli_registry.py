"""Every registry command through the CLI: output contracts, exit codes, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from speakerid.cli import app

from .conftest import real_speech, unit_rows

runner = CliRunner()


@pytest.fixture
def cli(db_url, tiny_ckpt, isolated_home):
    """The CLI on a registry of each backend (``run.index``: its index cache file)."""
    from speakerid.registry.database import DatabaseURL

    def run(*args, model=True):
        extra = ["--db", db_url] + (["--model", str(tiny_ckpt)] if model else [])
        return runner.invoke(app, [*map(str, args), *extra])

    run.index = DatabaseURL.parse(db_url).index_path(isolated_home)
    return run


def _one_line_error(result, code=2, contains=""):
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and contains in lines[0], lines
    assert "Traceback" not in result.output


def test_enroll_identify_verify_compare_json_contracts(cli, voices):
    r = cli("enroll", "alice", voices[0], voices[1], "--json", "--meta", "team=red")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert {k: out[k] for k in ("speaker", "created", "added", "skipped", "utterances")} == {
        "speaker": "alice",
        "created": True,
        "added": 2,
        "skipped": [],
        "utterances": 2,
    }
    assert out["warnings"] == []  # clean real recordings with 2.3 and 3.2 s of speech
    assert [q["file"] for q in out["quality"]] == [str(voices[0]), str(voices[1])]
    assert out["quality"][0]["duration"] == 3.36 and 2.0 < out["quality"][0]["speech_seconds"] < 3.0
    assert cli("enroll", "bob", voices[2], "--json").exit_code == 0

    r = cli("identify", voices[0], voices[2], "--top-k", "2", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [row["file"] for row in rows] == [str(voices[0]), str(voices[2])]
    assert [row["speaker"] for row in rows] == ["alice", "bob"]
    for row in rows:
        assert set(row) == {
            "file",
            "speaker",
            "score",
            "accepted",
            "threshold",
            "candidates",
            "reason",
        }
        assert row["accepted"] is True and len(row["candidates"]) == 2 and row["reason"] is None
        assert set(row["candidates"][0]) == {"speaker", "score"}

    r = cli("identify", voices[3], "--threshold", "1.0", "--json")
    assert r.exit_code == 1  # unknown speaker
    row = json.loads(r.stdout)[0]
    assert row["speaker"] is None and row["accepted"] is False and row["candidates"]

    r = cli("verify", "bob", voices[2], "--json")
    assert r.exit_code == 0
    v = json.loads(r.stdout)
    assert set(v) == {"speaker", "file", "score", "threshold", "accepted", "reason"}
    assert v["speaker"] == "bob" and v["accepted"] is True and v["threshold"] == 0.365
    assert v["reason"] is None
    r = cli("verify", "bob", voices[3], "--threshold", "1")  # another file: score < 1
    assert r.exit_code == 1 and r.stdout.startswith("rejected:")

    r = cli("compare", voices[0], voices[0], "--json")
    c = json.loads(r.stdout)
    assert set(c) == {"file1", "file2", "score", "threshold", "accepted", "reason"}
    assert r.exit_code == 0 and c["score"] == pytest.approx(1.0, abs=1e-5) and c["reason"] is None
    assert cli("compare", voices[0], voices[4], "-t", "1").exit_code == 1


def test_list_show_rename_remove(cli, voices):
    _one_line_error(cli("list", model=False), contains="no registry at")  # nothing created
    cli("enroll", "Zoë Smith", voices[0], voices[1])
    rows = json.loads(cli("list", "--json", model=False).stdout)
    assert [(r["name"], r["utterances"]) for r in rows] == [("Zoë Smith", 2)]
    assert set(rows[0]) == {"name", "utterances", "created", "updated"}
    shown = json.loads(cli("show", "Zoë Smith", "--json", model=False).stdout)
    assert [s["source"] for s in shown["sources"]] == [str(voices[0]), str(voices[1])]
    assert cli("rename", "Zoë Smith", "Zoe", model=False).exit_code == 0
    _one_line_error(cli("show", "Zoë Smith", model=False), contains="no speaker named")
    _one_line_error(cli("remove", "Zoe", model=False), contains="without --yes")
    r = cli("remove", "Zoe", "--yes", "--json", model=False)
    assert r.exit_code == 0 and json.loads(r.stdout) == {"removed": "Zoe", "utterances": 2}
    assert json.loads(cli("list", "--json", model=False).stdout) == []


def test_errors_are_one_line_with_exit_2(cli, voices, tmp_path):
    _one_line_error(cli("identify", voices[0]), contains="no registry at")
    cli("enroll", "alice", voices[0])
    _one_line_error(cli("enroll", "alice", voices[1]), contains="use --append")
    _one_line_error(cli("verify", "carol", voices[0]), contains="no speaker named 'carol'")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"nope" * 100)
    _one_line_error(cli("enroll", "bob", voices[1], bad), contains="bad.wav")
    assert [r["name"] for r in json.loads(cli("list", "--json", model=False).stdout)] == ["alice"]
    _one_line_error(cli("identify", voices[0], "--threshold", "2"), contains="[-1, 1]")
    _one_line_error(cli("identify", voices[0], "--top-k", "0"), contains="top-k")
    _one_line_error(cli("enroll", "x", voices[1], "--meta", "novalue"), contains="KEY=VALUE")
    _one_line_error(cli("rename", "alice", " ", model=False), contains="must not be empty")


def test_enroll_dir_and_index_and_info(cli, voices, tmp_path):
    root = tmp_path / "people"
    for name, files in {"ann": voices[:2], "ben": voices[2:4]}.items():
        (root / name).mkdir(parents=True)
        for f in files:
            (root / name / f.name).write_bytes(f.read_bytes())
    (root / "empty").mkdir()
    r = cli("enroll-dir", root, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [(s["speaker"], s["added"]) for s in out["speakers"]] == [("ann", 2), ("ben", 2)]
    (root / "ben" / "broken.wav").write_bytes(b"xx" * 100)
    _one_line_error(cli("enroll-dir", root, "--append"), contains="broken.wav")
    r = cli("enroll-dir", root, "--append", "--skip-errors", "--json")
    assert r.exit_code == 0 and "broken.wav" in json.loads(r.stdout)["errors"][0]

    info = json.loads(cli("info", "--json", model=False).stdout)
    assert (info["model"], info["speakers"], info["utterances"], info["dim"]) == ("tiny", 2, 4, 192)
    assert info["index_kind"] == "flat" and info["threshold"] == 0.365
    check = cli("index", "check", "--json", model=False)
    assert check.exit_code == 0 and json.loads(check.stdout)["ok"] is True
    cli.index.unlink()
    r = cli("index", "check", model=False)
    assert r.exit_code == 1 and "index file is missing" in r.stdout
    r = cli("index", "rebuild", "--json", model=False)
    assert r.exit_code == 0 and json.loads(r.stdout)["rebuilt"] is True
    assert cli("index", "check", model=False).exit_code == 0


def test_import_embeddings_formats_and_export(cli, tmp_path):
    vecs = unit_rows(4, seed=8)
    # 3D-Speaker infer_sv.py writes one (192,) array per utterance, named after the wav
    for i in range(2):
        np.save(tmp_path / f"spk{i}.npy", vecs[i] * 7.0)  # raw (unnormalized) outputs
    r = cli("import-embeddings", tmp_path / "spk0.npy", tmp_path / "spk1.npy", "--json")
    assert r.exit_code == 0, r.output
    assert [x["speaker"] for x in json.loads(r.stdout)] == ["spk0", "spk1"]
    np.save(tmp_path / "m.npy", vecs[2:])
    (tmp_path / "names.txt").write_text("carol\ncarol\n")
    r = cli("import-embeddings", tmp_path / "m.npy", "--names", tmp_path / "names.txt", "--json")
    got = json.loads(r.stdout)[0]
    assert (got["speaker"], got["created"], got["added"], got["utterances"]) == (
        "carol",
        True,
        2,
        2,
    )
    (tmp_path / "short.txt").write_text("dave\n")
    _one_line_error(
        cli("import-embeddings", tmp_path / "m.npy", "--names", tmp_path / "short.txt"),
        contains="1 names for an embedding matrix",
    )
    (tmp_path / "junk.npy").write_bytes(b"junk")
    _one_line_error(cli("import-embeddings", tmp_path / "junk.npy"), contains="not a readable")
    (tmp_path / "empty.npy").write_bytes(b"")
    _one_line_error(cli("import-embeddings", tmp_path / "empty.npy"), contains="(empty)")
    r = cli("export", tmp_path / "exp", "--json", model=False)
    assert json.loads(r.stdout)["utterances"] == 4
    assert (tmp_path / "exp" / "names.txt").read_text().split() == [
        "carol",
        "carol",
        "spk0",
        "spk1",
    ]
    r = cli("identify", "--help", model=False)
    assert r.exit_code == 0


def test_threshold_command_stores_per_registry(cli, voices):
    cli("enroll", "alice", voices[0])
    r = cli("threshold", "0.5", "--json", model=False)
    assert json.loads(r.stdout) == {"threshold": 0.5, "source": "set by user"}
    v = json.loads(cli("verify", "alice", voices[0], "--json").stdout)
    assert v["threshold"] == 0.5


def test_registry_commands_do_not_import_torch(tmp_path):
    import subprocess
    import sys

    from speakerid.registry.store import Registry

    Registry(tmp_path / "x.db").close()
    code = (
        "import sys; from typer.testing import CliRunner; from speakerid.cli import app; "
        f"r = CliRunner().invoke(app, ['list', '--db', r'{tmp_path / 'x.db'}']); "
        "assert r.exit_code == 0, r.output; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_quality_gates_refuse_short_speech_and_warn_on_clipping(cli, write_wav, voices):
    pause = np.zeros(16000 * 2, np.float32)
    word = real_speech(0)[16000 : 16000 + 9600]  # 0.6 s from the middle of a real utterance
    short = write_wav("short_speech.wav", np.concatenate([pause, word, pause]))
    _one_line_error(cli("enroll", "x", voices[0], short), contains="of speech (minimum 1.00 s)")
    _one_line_error(cli("list", model=False), contains="no registry at")  # nothing written
    r = cli("enroll", "x", short, "--force", "--json")
    assert r.exit_code == 0 and 0.3 < json.loads(r.stdout)["quality"][0]["speech_seconds"] < 1.0
    loud = np.clip(real_speech(3) * 8, -1, 1)
    r = cli("enroll", "y", write_wav("clipped.wav", loud), "--json")
    assert r.exit_code == 0
    assert any("clipped" in w for w in json.loads(r.stdout)["warnings"])
    speech = real_speech(4)
    noisy = speech + 0.05 * np.random.default_rng(0).standard_normal(len(speech))
    r = cli("enroll", "z", write_wav("noisy.wav", noisy.astype(np.float32)))
    assert r.exit_code == 0 and "low SNR" in r.stderr


def test_asnorm_needs_its_own_threshold_and_cohort(cli, voices):
    cli("enroll", "a", voices[0])
    cli("enroll", "b", voices[1])
    _one_line_error(cli("verify", "a", voices[0], "--asnorm"), contains="own threshold")
    _one_line_error(cli("verify", "a", voices[0], "--asnorm", "-t", "1"), contains="at least 3")
    cli("enroll", "c", voices[2])
    cli("enroll", "d", voices[3])
    r = cli("verify", "a", voices[0], "--asnorm", "-t", "2.5", "--json")
    v = json.loads(r.stdout)
    assert v["threshold"] == 2.5 and v["score"] > 2.5 and r.exit_code == 0
    r = cli("identify", voices[1], "--asnorm", "-t", "2.5", "--json", "-k", "3")
    row = json.loads(r.stdout)[0]
    assert row["speaker"] == "b" and len(row["candidates"]) == 3
