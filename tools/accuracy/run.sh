#!/usr/bin/env bash
# Accuracy of a SmolLM2-135M-Instruct reward model trained for one epoch on the UltraFeedback sample
# (../shared/data), evaluated on the sample's held-out eval file and on HH-RLHF helpful-base.
# Run from the repository root after tools/install.sh; about 30-40 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
CONFIG=tools/accuracy/smollm2_135m_instruct_reward_ultrafeedback_sample.py
WORK=${WORK:-work_dirs/smollm2_ultrafeedback_sample}
DATA=../shared/data

rmtrain train "$CONFIG" --work-dir "$WORK"
rmtrain convert pth_to_hf "$CONFIG" "$(cat "$WORK/last_checkpoint")" "$WORK/hf" --overwrite
rmtrain eval "$WORK/hf" "$DATA/ultrafeedback-binarized-sample/eval_clean.jsonl.gz" \
  --map-fn string_preference_map_fn --skip-bad-records --max-length 1024 --out "$WORK/eval_ultrafeedback.jsonl"
rmtrain eval "$WORK/hf" "$DATA/hh-rlhf/helpful-base/test.jsonl.gz" \
  --map-fn hh_rlhf_map_fn --skip-bad-records --max-length 1024 --out "$WORK/eval_hh_helpful.jsonl"
