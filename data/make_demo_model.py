"""Train the bundled demo model and write its model card (speakerid/assets/).

    python data/make_demo_model.py             # train (CPU, ~45 min on 2 cores) + card
    python data/make_demo_model.py --card-only --checkpoint X.pt --report X.json

Training data: ../shared/datasets/speechocean762-train only (125 speakers, 2,500 utterances,
2.9 h); 20 of its speakers are held out for validation. Dev metrics come from
``speakerid evaluate`` on ../shared/datasets/speechocean762-dev (63 other speakers).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
ASSET = ROOT / "speakerid" / "assets" / "demo-eres2netv2-m16.pt"
TRAIN_ARGS = [
    "--m-channels",
    "16",
    "--head-init",
    "lda",
    "--freeze-bn",
    "--val-speakers",
    "20",
    "--epochs",
    "2",
    "--batch-size",
    "32",
    "--optimizer",
    "adamw",
    "--lr",
    "1e-4",
    "--half",
]


def speakerid(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "speakerid", *args, "--json"],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--card-only", action="store_true")
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "build" / "demo-m16.pt")
    ap.add_argument("--report", type=Path, help="train --json output (with --card-only)")
    ap.add_argument("--train-seconds", type=float, help="wall time of an earlier training run")
    args = ap.parse_args()
    train_cmd = [
        "train",
        str(SHARED / "speechocean762-train"),
        "-o",
        str(args.checkpoint),
        *TRAIN_ARGS,
    ]
    if args.card_only:
        report = json.loads(args.report.read_text())
        seconds = args.train_seconds or report["seconds"]
    else:
        args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        report = speakerid(*train_cmd)
        seconds = time.time() - t0
    dev = speakerid("evaluate", str(SHARED / "speechocean762-dev"), "--model", str(args.checkpoint))
    shutil.copyfile(args.checkpoint, ASSET)
    sha = hashlib.sha256(ASSET.read_bytes()).hexdigest()
    ident = dev.get("identification") or {}
    card = {
        "name": "demo",
        "file": ASSET.name,
        "sha256": sha,
        "bytes": ASSET.stat().st_size,
        "summary": f"ERes2NetV2 m16 trained on speechocean762-train only, dev EER "
        f"{100 * dev['eer']:.2f}%",
        "config": {
            "m_channels": 16,
            "base_width": 26,
            "scale": 2,
            "expansion": 2,
            "embedding_size": 192,
            "feat_dim": 80,
        },
        "parameters": report["parameters"],
        "storage": "fp16 state dict in the official key layout (loaded as fp32)",
        "command": "speakerid " + " ".join(train_cmd).replace(str(ROOT.parent), ".."),
        "training": {
            "data": "speechocean762-train: 125 speakers (105 train + 20 validation), 2,500 "
            "utterances, 2.9 h, 16 kHz Opus; speed perturbation 0.9/1.1 as extra classes",
            "classes": report["num_classes"],
            "steps": report["steps"],
            "seconds": round(seconds),
            "hardware": "2 CPU cores (2 torch threads), no GPU",
            "validation_eer_before_training": report["init_val_eer"],
            "best_validation_eer": report["best_val_eer"],
            "best_epoch": report["best_epoch"],
            "history": report["history"],
        },
        "dev": {
            "set": "speechocean762-dev (63 speakers, 1,260 utterances)",
            "eer": dev["eer"],
            "eer_threshold": dev["eer_threshold"],
            "min_dcf_p01": dev["min_dcf_p01"],
            "target_trials": dev["target_trials"],
            "nontarget_trials": dev["nontarget_trials"],
            "top1_mean": ident.get("top1_mean"),
        },
        "recommended_threshold": round(dev["eer_threshold"], 4),
        "baseline": {"name": "shared test asset eres2netv2-m32-so762", "dev_eer": 0.0651},
    }
    ASSET.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    print(json.dumps({k: card[k] for k in ("sha256", "bytes", "summary")}, indent=1))
    print(json.dumps(card["dev"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
