#!/usr/bin/env bash
# Reproduces the numbers in docs/accuracy.md (test-asset model on speechocean762-dev).
set -euo pipefail
cd "$(dirname "$0")/.."
S=".venv/bin/speakerid"
M=../shared/models/eres2netv2-m32-so762.pt
DEV=../shared/datasets/speechocean762-dev
TRAIN=../shared/datasets/speechocean762-train
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
export SPEAKERID_HOME="$OUT/home"
$S evaluate $DEV --model $M --cohort $TRAIN --cohort-max 600 --plot docs/img --json > "$OUT/base.json"
$S evaluate $DEV --model $M --vad --json > "$OUT/vad.json"
$S evaluate $DEV --model $M -t 0.365 --json > "$OUT/t365.json"  # card threshold of the official model
.venv/bin/python bench/speech_gate.py --speakers 63 --json "$OUT/speech_gate.json"
for s in 0.5 1.0 1.5 2.0; do
  $S evaluate $DEV --model $M --vad --max-seconds $s --enroll-k 0 --json > "$OUT/crop$s.json"
done
