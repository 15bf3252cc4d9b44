"""AS-Norm has one definition: verify, identify and evaluate give the same pair the same score."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from speakerid.cli import app
from speakerid.scoring.scores import asnorm_scores, cohort_stats, registry_asnorm

from .conftest import ROOT, unit_rows

CLIPS = ROOT / "data" / "clips"
SPEAKERS = ["so0003", "so0044", "so0092", "so0094", "so0111"]


def _clips(name: str) -> list:
    return sorted((CLIPS / name).glob("*.opus"))


@pytest.fixture
def enrolled(sid):
    """Five real speakers, two recordings each; the probe is a third recording of so0044."""
    for name in SPEAKERS:
        sid.enroll(name, _clips(name)[:2])
    return sid, _clips("so0044")[3]


def test_verify_identify_and_evaluate_agree(enrolled):
    sid, probe = enrolled
    ident = sid.identify_many([probe], top_k=len(SPEAKERS), threshold=0.0, asnorm=True)[0]
    by_identify = {c.speaker: c.score for c in ident.candidates}
    assert sorted(by_identify) == SPEAKERS
    _, prints, names = sid.registry.all_voiceprints()
    vec = sid.embedder.embed(probe).vector
    for name in SPEAKERS:
        verified = sid.verify(name, probe, threshold=0.0, asnorm=True).score
        assert verified == pytest.approx(by_identify[name], abs=1e-6), name
        # evaluate's function, given the run-time cohort: the other speakers' voiceprints
        others = prints[[n != name for n in names]]
        own = prints[names.index(name)]
        paired = asnorm_scores(own, vec, others)[0]
        all_pairs = asnorm_scores(
            np.stack([own, vec]), np.stack([own, vec]), others, pairs=([0], [1])
        )[0]
        assert paired == pytest.approx(verified, abs=1e-6), name
        assert all_pairs == pytest.approx(verified, abs=1e-6), name
    # the candidate must not sit in the probe's own cohort (the old identify did this)
    name = SPEAKERS[0]
    raw = float(prints[names.index(name)] @ vec)
    full = cohort_stats(vec, prints)
    others = prints[[n != name for n in names]]
    stale = 0.5 * (
        (raw - cohort_stats(prints[names.index(name)], others)[0][0])
        / cohort_stats(prints[names.index(name)], others)[1][0]
        + (raw - full[0][0]) / full[1][0]
    )
    assert abs(stale - by_identify[name]) > 1e-3


def test_cli_verify_equals_identify(enrolled, tmp_path):
    sid, probe = enrolled
    db, model = str(sid.registry.path), str(sid._model)
    sid.close()
    runner = CliRunner()
    common = ["--db", db, "--model", model, "--asnorm", "--threshold", "0", "--json"]
    ident = runner.invoke(app, ["identify", str(probe), "--top-k", "5", *common])
    assert ident.exit_code in (0, 1), ident.output  # 1: below the threshold (unknown)
    by_identify = {c["speaker"]: c["score"] for c in json.loads(ident.stdout)[0]["candidates"]}
    for name in ("so0044", "so0092"):
        r = runner.invoke(app, ["verify", name, str(probe), *common])
        assert r.exit_code in (0, 1), r.output
        assert json.loads(r.stdout)["score"] == pytest.approx(by_identify[name], abs=1e-5)


def test_registry_rule_excludes_the_claimed_speaker():
    prints, probe = unit_rows(6, seed=1), unit_rows(1, seed=2)
    names = [f"s{i}" for i in range(6)]
    got = registry_asnorm(prints, names, ["s2", "s4"], np.repeat(probe, 2, axis=0), top_n=3)
    for k, i in enumerate((2, 4)):
        others = np.delete(prints, i, axis=0)
        assert got[k] == pytest.approx(asnorm_scores(prints[i], probe, others, 3)[0], abs=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        registry_asnorm(prints[:2], names[:2], ["s0"], probe)
