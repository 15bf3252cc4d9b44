"""Help and output for humans: flags shown as flags, examples, --version, plurals, did-you-mean."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from speakerid import __version__, errors
from speakerid.cli import app, manage_cmd
from speakerid.service.facade import SpeakerID

from .conftest import ROOT, unit_rows

runner = CliRunner()
CLIPS = ROOT / "data" / "clips"
ALICE = [CLIPS / "so0003" / "000030012.opus", CLIPS / "so0003" / "000030024.opus"]


def _commands(group=None, path=()):
    """Every leaf command of the CLI as its argument path, e.g. ('model', 'list')."""
    group = group or typer.main.get_command(app)
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name)


def _help(*path: str) -> str:
    res = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "100"})
    assert res.exit_code == 0, res.output
    return res.stdout


@pytest.fixture
def cli(tmp_path, tiny_ckpt):
    db = tmp_path / "cli.db"

    def run(*args, model=True):
        extra = ["--db", str(db)] + (["--model", str(tiny_ckpt)] if model else [])
        return runner.invoke(app, [*map(str, args), *extra])

    return run


def test_every_command_has_an_example_and_no_bool_placeholder():
    paths = list(_commands())
    assert (
        ("enroll",) in paths
        and (
            "model",
            "export-onnx",
        )
        in paths
        and ("index", "check") in paths
    )
    for path in paths:
        text = _help(*path)
        assert "<bool>" not in text, path
        lines = text.splitlines()
        heads = [i for i, ln in enumerate(lines) if ln.strip() in ("Example:", "Examples:")]
        assert len(heads) == 1, (path, text)
        examples = []
        for ln in lines[heads[0] + 1 :]:
            if not ln.strip():
                break
            examples.append(ln.strip())
        assert examples, path
        assert lines[heads[0]].strip() == ("Examples:" if len(examples) > 1 else "Example:")
        for ex in examples:
            assert ex.startswith(f"speakerid {' '.join(path)}"), (path, ex)
    assert "<bool>" not in _help()


def test_bool_options_render_as_flags():
    text = _help("enroll")
    assert re.search(r"│ --append +Add to an existing speaker\.", text), text
    assert re.search(r"│ --json +Machine-readable JSON on stdout\.", text), text
    assert re.search(r"│ --help +Show this message and exit\.", text), text
    assert re.search(r"--threads +N +Compute threads", text), text
    assert re.search(r"--augment +--no-augment +\[default: augment\]", _help("train"))
    assert re.search(r"│ --yes +-y +Do not ask for confirmation\.", _help("remove"))


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout == f"speakerid {__version__}\n" == "speakerid 0.1.0\n"
    out = subprocess.run(
        [sys.executable, "-m", "speakerid", "--version"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert out.stdout == "speakerid 0.1.0\n"


def test_plurals_in_enroll_show_list_remove(cli, monkeypatch):
    res = cli("enroll", "alice", ALICE[0])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("enrolled alice: 1 new, 1 utterance in total\n")
    assert cli("show", "alice", model=False).stdout.startswith("alice: 1 utterance, created ")
    res = cli("enroll", "alice", ALICE[1], "--append")
    assert res.stdout.startswith("updated alice: 1 new, 2 utterances in total\n")
    assert cli("show", "alice", model=False).stdout.startswith("alice: 2 utterances, created ")

    # scripts (not a TTY): name, utterances, created, updated, tab-separated
    fields = cli("list", model=False).stdout.rstrip("\n").split("\t")
    assert fields[:2] == ["alice", "2"] and len(fields) == 4
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", f) for f in fields[2:])
    # humans (a TTY): a table with a header
    monkeypatch.setattr(manage_cmd, "stdout_is_tty", lambda: True)
    lines = cli("list", model=False).stdout.splitlines()
    assert lines[0].split() == ["Speaker", "Utterances", "Created", "(UTC)", "Updated", "(UTC)"]
    assert lines[1].split()[:2] == ["alice", "2"]
    assert lines[-1] == "1 speaker, 2 utterances"
    monkeypatch.undo()

    res = cli("remove", "alice", "--yes", model=False)
    assert res.stdout == "removed alice (2 utterances)\n"
    assert cli("list", model=False).stdout == "no speakers enrolled\n"


def test_no_maybe_plural_left_in_the_cli_sources():
    for path in (ROOT / "speakerid" / "cli").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\w\(s\)", text.replace("never ``utterance(s)``", "")), path


def test_import_and_export_plurals(cli, tmp_path):
    import numpy as np

    np.save(tmp_path / "m.npy", unit_rows(3, seed=2))
    (tmp_path / "names.txt").write_text("ann\nann\nbob\n")
    res = cli("import-embeddings", tmp_path / "m.npy", "--names", tmp_path / "names.txt")
    assert res.stdout == "imported 3 embeddings for 2 speakers\n"
    res = cli("export", tmp_path / "out", model=False)
    assert res.stdout.startswith("exported 2 speakers, 3 embeddings to ")


def test_did_you_mean_comes_from_the_library(tmp_path, tiny_ckpt):
    with SpeakerID(db=tmp_path / "r.db", model=tiny_ckpt) as sid:
        sid.import_embeddings(["alice", "alicia", "bob"], unit_rows(3, seed=4), ["a", "b", "c"])
        with pytest.raises(errors.SpeakerNotFoundError) as exc:
            sid.show("alcie")
        assert str(exc.value) == "no speaker named 'alcie' in the registry (did you mean 'alice'?)"
        with pytest.raises(errors.SpeakerNotFoundError) as exc:
            sid.remove("ALICE")
        assert str(exc.value).endswith("in the registry (did you mean 'alice'?)")
        with pytest.raises(errors.SpeakerNotFoundError) as exc:
            sid.verify("Bob", ALICE[0])
        assert str(exc.value).endswith("(did you mean 'bob'?)")
        with pytest.raises(errors.SpeakerNotFoundError) as exc:
            sid.rename("zed", "zoe")
        assert str(exc.value) == "no speaker named 'zed' in the registry"
        assert sid.registry.similar_names("alic") == ["alice", "alicia"]


def test_cli_did_you_mean_and_swapped_verify_arguments(cli, tmp_path):
    cli("import-embeddings", *_npys(tmp_path, ["alice", "bob"]))
    res = cli("verify", "alcie", ALICE[0])
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr == (
        "error: no speaker named 'alcie' in the registry (did you mean 'alice'?)\n"
    )
    res = cli("verify", ALICE[0], "alice")  # swapped: the file comes first
    assert res.exit_code == 2
    assert res.stderr == (
        f"error: no speaker named '{ALICE[0]}' in the registry; '{ALICE[0]}' is a file: "
        "the speaker name comes first, then the audio\n"
    )


def _npys(tmp_path, names):
    import numpy as np

    paths = []
    for i, name in enumerate(names):
        paths.append(tmp_path / f"{name}.npy")
        np.save(paths[-1], unit_rows(1, seed=10 + i)[0])
    return paths


def test_info_ends_with_a_newline(cli, tmp_path):
    cli("import-embeddings", *_npys(tmp_path, ["alice"]))
    out = cli("info", model=False).stdout
    assert out.endswith("\n") and not out.endswith("\n\n")
    assert out.splitlines()[-1].startswith("backend")
    assert json.loads(cli("info", "--json", model=False).stdout)["speakers"] == 1


def _cli_modules(*argv: str) -> tuple[list[str], str]:
    code = (
        "import sys; from speakerid.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('speakerid.cli.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True
    )
    *shown, loaded = out.stdout.strip().splitlines()
    return eval(loaded), "\n".join(shown)  # noqa: S307 (our own printed list)


def test_a_command_line_builds_only_the_command_it_runs():
    """One-shot latency (issue 21): `speakerid verify` builds one command's parser, not ~25."""
    loaded, shown = _cli_modules("verify", "--help")
    assert loaded == ["speakerid.cli.common", "speakerid.cli.registry_cmd"]
    assert "Usage: speakerid verify [OPTIONS] {name} {files}..." in shown
    loaded, shown = _cli_modules("--help")  # no command: the whole app, every command listed
    assert "speakerid.cli.eval_cmd" in loaded and "speakerid.cli.serve_cmd" in loaded
    for name in ("enroll-dir", "import-embeddings", "calibrate", "serve", "keys", "registry"):
        assert f" {name} " in shown, name
    loaded, shown = _cli_modules("index", "--help")  # a group is built alone too
    assert loaded == ["speakerid.cli.common", "speakerid.cli.manage_cmd"]
    assert "check" in shown and "rebuild" in shown
