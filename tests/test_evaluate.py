"""evaluate / calibrate through the CLI on a small real-voice folder (test-asset model)."""

from __future__ import annotations

import csv
import json
import shutil
from collections import defaultdict

import pytest
from typer.testing import CliRunner

from speakerid.cli import app
from speakerid.evaluation import read_trials, speaker_folders
from speakerid.trials import folder_trials

from .conftest import DATASETS, TEST_MODEL, needs_dev_set

runner = CliRunner()
DEV = DATASETS / "speechocean762-dev"
pytestmark = needs_dev_set


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """8 dev speakers x 5 recordings, one sub-folder per speaker."""
    root = tmp_path_factory.mktemp("eval") / "people"
    by_spk = defaultdict(list)
    with open(DEV / "manifest.csv") as f:
        for row in csv.DictReader(f):
            by_spk[row["speaker"]].append(DEV / row["path"])
    for spk in sorted(by_spk)[:8]:
        (root / spk).mkdir(parents=True)
        for p in by_spk[spk][:5]:
            shutil.copy(p, root / spk / p.name)
    return root


def _cli(*args, db):
    return runner.invoke(app, [*map(str, args), "--db", str(db), "--model", str(TEST_MODEL)])


def test_folder_trials_are_every_pair(folder):
    ts = folder_trials(speaker_folders(folder))
    assert (ts.n_target, ts.n_nontarget) == (8 * 10, 40 * 39 // 2 - 8 * 10)
    same = [ts.files[i].parent == ts.files[j].parent for i, j in zip(ts.enroll, ts.test)]
    assert same == ts.target.tolist()


def test_evaluate_folder_json_and_plots(folder, tmp_path):
    r = _cli(
        "evaluate",
        folder,
        "--json",
        "--plot",
        tmp_path / "plots",
        "--enroll-k",
        "3",
        "--cohort",
        folder,
        "--cohort-max",
        "20",
        db=tmp_path / "r.db",
    )
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert (rep["target_trials"], rep["nontarget_trials"]) == (80, 700)
    assert rep["trials"] == "all 80 same-speaker pairs and all 700 different-speaker pairs"
    assert any(w.startswith("FAR 0.1% needs at least 30,000") for w in rep["warnings"])
    assert 0.0 <= rep["eer"] < 0.3 and rep["min_dcf_p01"] <= 1.0
    assert rep["threshold_far_01pct"] >= rep["threshold_far_1pct"]
    ident = rep["identification"]
    assert ident["probes"] + ident["impostor_probes"] == 8 * 5 - ident["enrolled_speakers"] * 3
    assert ident["top1_mean"] >= 0.7 and ident["top5_mean"] >= ident["top1_mean"]
    assert 0.0 <= ident["open_set_far"] <= 1.0 and rep["asnorm"]["cohort"] == 20
    assert [p.split("/")[-1] for p in rep["plots"]] == ["det.png", "scores.png"]
    assert (tmp_path / "plots" / "det.png").read_bytes()[:4] == b"\x89PNG"


def test_trial_list_and_malformed_list(folder, tmp_path):
    spk = sorted(speaker_folders(folder).items())
    lines = [
        f"{spk[0][0]}/{spk[0][1][0].name} {spk[0][0]}/{spk[0][1][1].name} target",
        f"{spk[0][0]}/{spk[0][1][0].name} {spk[1][0]}/{spk[1][1][0].name} nontarget",
        f"{spk[1][0]}/{spk[1][1][0].name} {spk[1][0]}/{spk[1][1][2].name} 1",
        f"{spk[2][0]}/{spk[2][1][0].name} {spk[1][0]}/{spk[1][1][2].name} 0",
    ]
    trials = tmp_path / "trials.txt"
    trials.write_text("\n".join(lines) + "\n")
    assert [t.target for t in read_trials(trials, folder)] == [True, False, True, False]
    r = _cli("evaluate", trials, "--root", folder, "--json", db=tmp_path / "r.db")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["target_trials"] == 2
    trials.write_text("a.wav b.wav maybe\n")
    r = _cli("evaluate", trials, db=tmp_path / "r.db")
    assert r.exit_code == 2 and "expected 'enroll_path test_path label'" in r.stderr


def test_calibrate_applies_threshold_to_registry(folder, tmp_path):
    db = tmp_path / "cal.db"
    r = _cli("calibrate", folder, "--target-far", "0.05", "--apply", "--json", db=db)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["applied"] and out["far"] <= 0.05 and -1 <= out["threshold"] <= 1
    shown = json.loads(runner.invoke(app, ["threshold", "--json", "--db", str(db)]).stdout)
    assert shown["threshold"] == out["threshold"]
    assert shown["source"].startswith("calibrate ") and "FAR" in shown["source"]
    r = _cli("calibrate", folder, "--asnorm", db=db)
    assert r.exit_code == 2 and "--cohort" in r.stderr
    r = _cli(
        "calibrate",
        folder,
        "--asnorm",
        "--cohort",
        folder,
        "--cohort-max",
        "20",
        "--apply",
        "--json",
        db=db,
    )
    assert r.exit_code == 0, r.output
    z = json.loads(r.stdout)
    assert z["asnorm"] and z["threshold"] > 0  # a z-score, not a cosine
    shown = json.loads(runner.invoke(app, ["threshold", "--json", "--db", str(db)]).stdout)
    assert shown["threshold"] == out["threshold"]  # the cosine threshold is unchanged
