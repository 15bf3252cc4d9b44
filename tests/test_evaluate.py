"""evaluate / calibrate through the CLI on a small real-voice folder (test-asset model)."""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections import defaultdict

import numpy as np
import pytest
from typer.testing import CliRunner

from speakerid.cli import app
from speakerid.scoring.evaluation import read_trials, speaker_folders, verification_metrics
from speakerid.scoring.trials import folder_trials

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


# Pinned results on this folder (8 dev speakers x 5 recordings, every pair: 80 target and 700
# non-target trials; test-asset model, fp32). Error budget: the metrics are ratios of trial
# counts, so they change only where a score crosses a threshold. Scores from two independent
# fp32 implementations (ONNX Runtime and PyTorch) differ by at most 3e-6 (measured); a different
# CPU (SIMD width, FMA) or library build rounds differently but of that order, so we budget 1e-4
# per score (30x). Perturbing every score by +-1e-4 leaves all the metrics below unchanged, and
# even +-3e-3 moves the EER by at most 0.008, minDCF(0.01) by 0.025 and minDCF(0.05) by 0.0125
# (300 random draws each): those are the tolerances. A broken scorer lands far outside them:
# shuffled labels give EER 0.49 and both minDCFs 1.0, inverted scores EER 0.89.
PINNED = {
    "eer": (0.1098, 0.01),
    "min_dcf_p01": (0.8164, 0.03),
    "min_dcf_p05": (0.5482, 0.02),
    "eer_threshold": (0.3249, 3e-3),
    "threshold_far_1pct": (0.4588, 3e-3),
    "frr_at_far_1pct": (0.4125, 0.0125),  # one target trial
    "threshold_far_01pct": (0.5838, 3e-3),
    "frr_at_far_01pct": (0.8625, 0.0125),
}
# AS-Norm with 20 of these files as cohort: z-scores divide by a cohort spread of ~0.1, so the
# same budget moves them ~10x more. Noise of norm 1e-4 on every embedding (5x the measured
# 2e-5 between the two fp32 implementations) leaves every rate unchanged and moves the z
# thresholds by <= 3e-4; noise of 1e-3 still leaves the rates and moves thresholds <= 0.012.
PINNED_ASNORM = {
    "eer": (0.1, 0.01),
    "min_dcf_p01": (0.8368, 0.03),
    "min_dcf_p05": (0.4939, 0.02),
    "eer_threshold": (0.7535, 0.03),
    "threshold_far_1pct": (1.4136, 0.03),
    "frr_at_far_1pct": (0.375, 0.0125),
    "threshold_far_01pct": (2.1715, 0.03),
}


@pytest.fixture(scope="module")
def vectors(folder) -> dict:
    """Every file's embedding, computed here (one clip at a time) for the brute-force check."""
    from speakerid.embedding.embedder import Embedder

    embedder = Embedder(TEST_MODEL)
    return {p: embedder.embed(p).vector for p in sorted(folder.glob("*/*"))}


def _every_pair(vectors: dict) -> tuple[np.ndarray, np.ndarray]:
    """Target and non-target cosines of every pair of files, labelled by folder."""
    files = list(vectors)
    target, nontarget = [], []
    for i, a in enumerate(files):
        for b in files[i + 1 :]:
            score = float(np.dot(vectors[a], vectors[b]))
            (target if a.parent == b.parent else nontarget).append(score)
    return np.array(target), np.array(nontarget)


def _brute_force(target: np.ndarray, nontarget: np.ndarray) -> dict:
    """EER, minDCF and FAR operating points by counting trials at every candidate threshold
    (accept when score >= t), independently of speakerid.scoring.metrics."""
    target, nontarget = np.asarray(target), np.asarray(nontarget)
    rows = []  # (threshold, miss rate, false-alarm rate), thresholds ascending
    for t in [*sorted(set(target) | set(nontarget)), math.inf]:
        rows.append((t, np.sum(target < t) / len(target), np.sum(nontarget >= t) / len(nontarget)))
    # EER where the curves cross: the first threshold with miss >= fa or the one before it,
    # whichever has the closer rates; the EER is the mean of those two rates.
    cross = next(i for i, (_, miss, fa) in enumerate(rows) if miss >= fa)
    near = min(rows[max(cross - 1, 0) : cross + 1], key=lambda r: abs(r[1] - r[2]))
    out = {"eer": (near[1] + near[2]) / 2, "eer_threshold": near[0]}
    for key, p in (("min_dcf_p01", 0.01), ("min_dcf_p05", 0.05)):
        out[key] = min(p * miss + (1 - p) * fa for _, miss, fa in rows) / min(p, 1 - p)
    for key, far in (("1pct", 0.01), ("01pct", 0.001)):
        t, miss, _ = next(r for r in rows if r[2] <= far)  # the lowest threshold within budget
        if t == math.inf:  # only "reject all" is within budget: just above every non-target
            t = max(nontarget) + 1e-6
        out[f"threshold_far_{key}"], out[f"frr_at_far_{key}"] = t, miss
    return out


def test_metrics_equal_brute_force_counts_on_random_score_sets():
    """speakerid's metrics against the counting above on 300 random small score sets, with
    ties (scores on a 0.05 grid), overlaps of every degree, inverted sets, and non-target
    counts where a false-alarm rate can equal 1% or 0.1% exactly."""
    rng = np.random.default_rng(11)
    for _ in range(300):
        shift = rng.uniform(-1.0, 2.0)
        n_non = int(rng.choice([rng.integers(1, 60), 100, 700, 1000]))
        target = np.round(rng.normal(shift, 1.0, rng.integers(1, 25)) / 0.05) * 0.05
        nontarget = np.round(rng.normal(0.0, 1.0, n_non) / 0.05) * 0.05
        want = _brute_force(target, nontarget)
        got = verification_metrics(target, nontarget)
        assert {k: got[k] for k in want} == pytest.approx(want, rel=0, abs=1e-12), (
            target.tolist(),
            nontarget.tolist(),
        )


def test_folder_trials_are_every_pair(folder):
    ts = folder_trials(speaker_folders(folder))
    assert (ts.n_target, ts.n_nontarget) == (8 * 10, 40 * 39 // 2 - 8 * 10)
    same = [ts.files[i].parent == ts.files[j].parent for i, j in zip(ts.enroll, ts.test)]
    assert same == ts.target.tolist()


def test_evaluate_folder_json_and_plots(folder, vectors, tmp_path):
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
    # the same numbers as counting every pair of independently computed embeddings ...
    target, nontarget = _every_pair(vectors)
    want = _brute_force(target, nontarget)
    assert {k: rep[k] for k in want} == pytest.approx(want, rel=0, abs=1e-5)
    at = rep["threshold"]
    assert at == 0.2222  # the test asset's own threshold (its EER point on the full dev set)
    assert rep["far_at_threshold"] == pytest.approx(np.mean(nontarget >= at), abs=1e-12)
    assert rep["frr_at_threshold"] == pytest.approx(np.mean(target < at), abs=1e-12)
    # ... and the values pinned for this data (tolerances: the error budget above)
    got = {k: rep[k] for k in PINNED}
    assert got == {k: pytest.approx(v, abs=tol) for k, (v, tol) in PINNED.items()}
    ident = rep["identification"]
    assert (ident["enrolled_speakers"], ident["probes"], ident["impostor_probes"]) == (7, 14, 5)
    # every probe's best speaker leads the runner-up by >= 0.028 (280x the score budget), and
    # the 5 impostor probes' best scores are >= 0.0074 from the threshold (one above it):
    # exact counts, no tolerance
    assert (ident["top1_mean"], ident["top5_mean"], ident["open_set_far"]) == (13 / 14, 1.0, 0.2)
    assert ident["top1_max"] == pytest.approx(12 / 14, abs=1 / 14)  # one probe
    assert (rep["asnorm"]["cohort"], rep["asnorm"]["top_n"]) == (20, 100)
    got = {k: rep["asnorm"][k] for k in PINNED_ASNORM}
    assert got == {k: pytest.approx(v, abs=tol) for k, (v, tol) in PINNED_ASNORM.items()}
    assert [p.split("/")[-1] for p in rep["plots"]] == ["det.png", "scores.png"]
    assert (tmp_path / "plots" / "det.png").read_bytes()[:4] == b"\x89PNG"


def test_trial_list_metrics_computed_by_hand(folder, tmp_path):
    """Each recording scored against itself (cosine 1 up to float rounding) against pairs of
    different speakers (at most 0.67 here): every metric is known without any computation,
    and swapping the labels turns each into its opposite extreme."""
    spk = sorted(speaker_folders(folder).items())
    a, b, c, d = (f"{n}/{files[0].name}" for n, files in spk[:4])
    trials = tmp_path / "trials.txt"
    trials.write_text(f"{a} {a} target\n{b} {b} target\n{a} {c} nontarget\n{b} {d} nontarget\n")
    r = _cli("evaluate", trials, "--root", folder, "--json", db=tmp_path / "r.db")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    # accepting at cosine 1 keeps both targets and rejects both non-targets: no error at all
    assert (rep["eer"], rep["min_dcf_p01"], rep["min_dcf_p05"]) == (0.0, 0.0, 0.0)
    assert (rep["frr_at_far_1pct"], rep["frr_at_far_01pct"]) == (0.0, 0.0)
    assert rep["threshold_far_1pct"] == pytest.approx(1.0, abs=1e-6)  # the targets' score
    flipped = tmp_path / "flipped.txt"
    flipped.write_text(f"{a} {a} 0\n{b} {b} 0\n{a} {c} 1\n{b} {d} 1\n")
    r = _cli("evaluate", flipped, "--root", folder, "--json", db=tmp_path / "r.db")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    # every non-target outscores every target: the only threshold without false accepts
    # rejects everything (miss 1, normalized cost 1); the curves cross at miss = fa = 1
    assert (rep["eer"], rep["min_dcf_p01"], rep["min_dcf_p05"]) == (1.0, 1.0, 1.0)
    assert (rep["frr_at_far_1pct"], rep["frr_at_far_01pct"]) == (1.0, 1.0)


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


def test_calibrate_applies_threshold_to_registry(folder, vectors, tmp_path):
    db = tmp_path / "cal.db"
    r = _cli("calibrate", folder, "--target-far", "0.05", "--apply", "--json", db=db)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    # the lowest threshold with at most 5% of the 700 non-target trials accepted, counted here
    target, nontarget = _every_pair(vectors)
    lowest = min(t for t in [*target, *nontarget] if np.mean(nontarget >= t) <= 0.05)
    want_far, want_frr = np.mean(nontarget >= lowest), np.mean(target < lowest)
    assert out["applied"] and out["threshold"] == pytest.approx(lowest, abs=1e-5)
    assert (out["far"], out["frr"]) == pytest.approx((want_far, want_frr), abs=1e-12)
    # pinned (error budget above): 35 of 700 false accepts, 17 of 80 misses
    assert (out["threshold"], out["far"], out["frr"]) == pytest.approx(
        (0.3790, 0.05, 0.2125), abs=3e-3
    )
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
    # a z-score at the default target FAR 1%: evaluate's AS-Norm point on the same cohort
    assert z["asnorm"] and z["threshold"] == pytest.approx(1.4136, abs=0.03)
    assert (z["far"], z["frr"]) == pytest.approx((0.01, 0.375), abs=1e-12)
    shown = json.loads(runner.invoke(app, ["threshold", "--json", "--db", str(db)]).stdout)
    assert shown["threshold"] == out["threshold"]  # the cosine threshold is unchanged
