"""Real voices end to end: the test-asset model on speechocean762-dev through the registry.

Protocol of ``eres2netv2-m32-so762.json``: all 63 dev speakers, each enrolled with the first 3
utterances in manifest order (mean voiceprint), the other 17 utterances are probes (1071).
The model card reports closed-set top-1 = 0.8982 and pairwise EER 6.51% at cosine 0.2222.
The card used every file, so the speech gates are switched off here (``force``,
``min_speech=0``): Silero finds less than 1 s of speech in 11 of the 1,260 dev files.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict

import numpy as np
import pytest

from speakerid.errors import AudioQualityError
from speakerid.scoring.metrics import eer
from speakerid.service.facade import SpeakerID

from .conftest import DATASETS, TEST_MODEL, needs_dev_set

DEV = DATASETS / "speechocean762-dev"
pytestmark = needs_dev_set


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    by_spk = defaultdict(list)
    with open(DEV / "manifest.csv") as f:
        for row in csv.DictReader(f):
            by_spk[row["speaker"]].append(DEV / row["path"])
    db = tmp_path_factory.mktemp("e2e") / "reg.db"
    with SpeakerID(db=db, model=TEST_MODEL) as sid:
        with pytest.raises(AudioQualityError, match="000440032.flac: only 0.41 s of speech"):
            sid.enroll("so0044", by_spk["so0044"][:3])  # the gate, before any embedding
        for spk, files in by_spk.items():
            sid.enroll(spk, files[:3], force=True)
        probes = [(spk, f) for spk, files in by_spk.items() for f in files[3:]]
        results = sid.identify_many(
            [f for _, f in probes], top_k=63, threshold=0.2222, min_speech=0
        )
        report = sid.check_index()
    card = json.loads(TEST_MODEL.with_suffix(".json").read_text())["evaluation"]["this_model"]
    return by_spk, probes, results, report, card


def test_closed_set_top1_matches_model_card(outcome):
    by_spk, probes, results, report, card = outcome
    assert len(by_spk) == 63 and len(probes) == 1071 and report.ok
    top1 = np.mean([r.candidates[0].speaker == spk for (spk, _), r in zip(probes, results)])
    # Same protocol as the card, so the number must agree to within rounding noise of
    # float32 batching (a single flipped probe is 0.1 point): margin 1 point.
    assert top1 >= card["top1_id_acc_enrol_first3"] - 0.01, top1
    assert top1 <= card["top1_id_acc_enrol_first3"] + 0.01, top1


def test_verification_decisions_at_card_eer_threshold(outcome):
    _, probes, results, _, card = outcome
    target, nontarget = [], []
    for (spk, _), r in zip(probes, results):
        for c in r.candidates:
            (target if c.speaker == spk else nontarget).append(c.score)
    target, nontarget = np.array(target), np.array(nontarget)
    assert len(target) == 1071 and len(nontarget) == 1071 * 62
    # Mean voiceprints raise target and non-target cosines alike, so the card's pairwise
    # threshold does not transfer; the threshold-free EER must be at the card's level or
    # better (margin 1 point), and decisions at that EER threshold must balance.
    rate, t = eer(target, nontarget)
    assert rate <= card["eer"] + 0.01, rate
    frr, far = np.mean(target < t), np.mean(nontarget >= t)
    assert abs(frr - rate) <= 0.01 and abs(far - rate) <= 0.01, (frr, far, rate)
    print(
        f"voiceprint EER {rate:.4f} at {t:.4f}; at card threshold 0.2222: "
        f"FRR {np.mean(target < 0.2222):.4f} FAR {np.mean(nontarget >= 0.2222):.4f}"
    )
    t = 0.2222
    # open-set answers follow the threshold exactly
    for r in results:
        assert r.accepted == (r.score >= t)
        assert r.speaker == (r.candidates[0].speaker if r.accepted else None)
