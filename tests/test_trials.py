"""evaluate/calibrate use every pair of a folder and warn when counts cannot carry a rate."""

from __future__ import annotations

import csv
import itertools
import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from speakerid.cli import app
from speakerid.scoring.metrics import threshold_at_far
from speakerid.scoring.trials import folder_trials, list_trials, read_trials, trial_warnings

from .conftest import DATASETS

DEV = DATASETS / "speechocean762-dev"


def _folder(n_speakers: int, per_speaker: int) -> dict[str, list[Path]]:
    return {
        f"spk{s:02d}": [Path(f"spk{s:02d}/{u}.wav") for u in range(per_speaker)]
        for s in range(n_speakers)
    }


def test_fifteen_speakers_give_every_pair():
    """The issue's folder: 15 speakers x 6 files = 225 target and 3,780 non-target pairs."""
    ts = folder_trials(_folder(15, 6))
    assert (ts.n_target, ts.n_nontarget) == (225, 3780)
    pairs = list(zip(ts.enroll.tolist(), ts.test.tolist()))
    assert set(pairs) == set(itertools.combinations(range(90), 2)) and len(pairs) == 4005
    owner = [p.parent.name for p in ts.files]
    assert all((owner[i] == owner[j]) == t for (i, j), t in zip(pairs, ts.target))
    assert ts.description == "all 225 same-speaker pairs and all 3,780 different-speaker pairs"


def test_uneven_folder_and_capped_sample_are_exact_and_seeded():
    speakers = {f"s{i}": [Path(f"s{i}/{u}") for u in range(1 + i % 4)] for i in range(9)}
    ts = folder_trials(speakers)
    sizes = [len(f) for f in speakers.values()]
    n = sum(sizes)
    same = sum(k * (k - 1) // 2 for k in sizes)
    assert (ts.n_target, ts.n_nontarget) == (same, n * (n - 1) // 2 - same)
    a = folder_trials(speakers, seed=4, max_targets=5, max_nontargets=40)
    b = folder_trials(speakers, seed=4, max_targets=5, max_nontargets=40)
    c = folder_trials(speakers, seed=5, max_targets=5, max_nontargets=40)
    assert (a.n_target, a.n_nontarget) == (5, 40)
    assert np.array_equal(a.enroll, b.enroll) and np.array_equal(a.test, b.test)
    assert not (np.array_equal(a.enroll, c.enroll) and np.array_equal(a.test, c.test))
    pairs = list(zip(a.enroll.tolist(), a.test.tolist()))
    assert len(set(pairs)) == 45 and all(i < j for i, j in pairs)
    owner = [p.parent.name for p in a.files]
    assert all((owner[i] == owner[j]) == t for (i, j), t in zip(pairs, a.target))
    assert "seeded sample (seed 4) of 40 of" in a.description
    with pytest.raises(Exception, match="at least 2 speakers"):
        folder_trials({"solo": [Path("a"), Path("b")]})


def test_trial_list_is_kept_as_given(tmp_path):
    (tmp_path / "t.txt").write_text("a.wav b.wav 1\na.wav c.wav 0\nc.wav b.wav nontarget\n")
    ts = list_trials(read_trials(tmp_path / "t.txt"))
    assert [p.name for p in ts.files] == ["a.wav", "c.wav", "b.wav"]
    assert ts.target.tolist() == [True, False, False] and ts.description == "trial list"


def test_warnings_follow_the_rule_of_30():
    w = trial_warnings(225, 3780, (0.01, 0.001), eer=0.05)
    assert w == [
        "FAR 0.1% needs at least 30,000 non-target trials (rule of 30: 30/rate), only 3,780: "
        "it is unreliable",
        "EER 5% needs at least 600 target trials (rule of 30: 30/rate), only 225: it is unreliable",
    ]
    assert trial_warnings(700, 30_000, (0.001,), eer=0.05) == []
    assert trial_warnings(300, 300, eer=0.0) == [
        "EER 0% on 300 target trials: only known to be below 1% (rule of 3)",
        "EER 0% on 300 non-target trials: only known to be below 1% (rule of 3)",
    ]


def test_far_stays_an_exact_count_ratio():
    rng = np.random.default_rng(0)
    non, tgt = rng.normal(0, 1, 3780), rng.normal(3, 1, 225)
    thr, far, frr = threshold_at_far(tgt, non, 0.001)
    assert far == 3 / 3780 and np.sum(non >= thr) == 3
    assert frr == np.sum(tgt < thr) / 225


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    """5 real dev speakers x 3 recordings."""
    if not DEV.is_dir():
        pytest.skip("shared dataset not available")
    root = tmp_path_factory.mktemp("trials") / "people"
    by_spk = defaultdict(list)
    with open(DEV / "manifest.csv") as f:
        for row in csv.DictReader(f):
            by_spk[row["speaker"]].append(DEV / row["path"])
    for spk in sorted(by_spk)[:5]:
        (root / spk).mkdir(parents=True)
        for p in by_spk[spk][:3]:
            shutil.copy(p, root / spk / p.name)
    return root


def test_cli_counts_warnings_and_plots(small_folder, tiny_ckpt, tmp_path):
    from PIL import Image

    runner = CliRunner()
    common = ["--db", str(tmp_path / "r.db"), "--model", str(tiny_ckpt), "--json"]
    r = runner.invoke(app, ["evaluate", str(small_folder), "--plot", str(tmp_path), *common])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert (rep["target_trials"], rep["nontarget_trials"]) == (15, 90)  # C(15,2) - 15
    far_warning = "FAR 0.1% needs at least 30,000 non-target trials"
    assert any(w.startswith(far_warning) for w in rep["warnings"])
    assert f"warning: {far_warning}" in r.stderr
    title = f"{rep['model']}: 15 target / 90 non-target trials"
    det, hist = (Image.open(tmp_path / n) for n in ("det.png", "scores.png"))
    assert det.text["Title"] == title and hist.text["Title"] == title
    assert f"EER {100 * rep['eer']:.2f}%" in det.text["Description"]
    assert f"threshold {rep['threshold']:.4f}" in det.text["Description"]
    assert f"EER threshold {rep['eer_threshold']:.4f}" in hist.text["Description"]

    r = runner.invoke(app, ["calibrate", str(small_folder), "--target-far", "0.001", *common])
    assert r.exit_code == 0, r.output
    cal = json.loads(r.stdout)
    assert (cal["target_trials"], cal["nontarget_trials"]) == (15, 90)
    assert any(w.startswith(far_warning) for w in cal["warnings"])
    assert f"warning: {far_warning}" in r.stderr and cal["far"] == 0.0
