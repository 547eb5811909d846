#!/usr/bin/env bash
# Short, equal-budget runs on the real-voice pool (issue 20): what each augmentation does,
# and GALR against a DPRNN of the same size (the paper's claim in miniature), all scored on
# the held-out real speakers (tt, whole utterances) and summarised per source.
#   bash experiments/real_voices.sh [RUN ...]      (default: every run, in the order below)
# Every run is the released recipe (configs/pretrained/galr_voices_8k.yaml) shortened to
# STEPS steps (hold, then a cosine decay over the second half) with one change. Runs are
# resumable; a finished run is only re-scored. Results: $RUNS/<run>/eval/tt/ and the table
# printed by experiments/real_voices_table.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${GALR_PYTHON:-.venv/bin/python}
DATA=${DATA:-data/realpool}
RUNS=${RUNS:-runs/real_voices}
STEPS=${STEPS:-1000}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
export XLA_FLAGS=${XLA_FLAGS:---xla_force_host_platform_device_count=2}
NO_AUG="data.augment_speed=0 data.augment_gain_db=0 data.augment_band_prob=0 data.augment_reverb_prob=0"
declare -A CHANGE=(
  [galr_all]=""
  # the same recipe from another seed: how far two runs differ with no change at all
  [galr_all_seed1]="train.seed=1"
  [galr_noaug]="$NO_AUG"
  # 3 blocks, 46 hidden units: 310.7k parameters against GALR's 306.9k
  [dprnn_all]="model.separator=dprnn model.hidden=46"
  [galr_noreverb]="data.augment_reverb_prob=0"
  [galr_nospeed]="data.augment_speed=0"
  [galr_noband]="data.augment_band_prob=0"
  [galr_nogain]="data.augment_gain_db=0"
  # model size: the demo's 2 blocks (214k parameters) and 4 blocks (400k)
  [galr_2blocks]="model.num_blocks=2"
  [galr_4blocks]="model.num_blocks=4"
)
ORDER=(galr_all galr_all_seed1 galr_noaug dprnn_all galr_noreverb galr_nospeed galr_noband galr_nogain galr_2blocks galr_4blocks)
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=("${ORDER[@]}")
for run in "${runs[@]}"; do
  [ -n "${CHANGE[$run]+set}" ] || { echo "unknown run $run (known: ${ORDER[*]})" >&2; exit 2; }
  # shellcheck disable=SC2086  # the changes are separate KEY=VALUE words
  $PY train.py --config configs/pretrained/galr_voices_8k.yaml --workdir "$RUNS/$run" \
    --set data.root="$DATA" train.num_steps="$STEPS" train.warmup_steps=100 \
    train.decay_steps=$((STEPS / 2)) train.eval_every="$STEPS" train.checkpoint_every=$((STEPS / 2)) \
    ${CHANGE[$run]}
  $PY eval.py --workdir "$RUNS/$run" --which latest --data "$DATA" --split tt --no-sdr --quiet
done
$PY experiments/real_voices_table.py --runs "$RUNS" --data "$DATA"
