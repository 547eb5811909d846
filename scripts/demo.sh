#!/usr/bin/env bash
# The main job on a fresh machine: set up, build the offline demo data, train the demo GALR,
# evaluate it on unseen speakers, and separate one mixture into files.
# Extra arguments go to train.py, e.g.  bash scripts/demo.sh --set train.num_steps=500
# GALR_SKIP_SETUP=1 skips every installation, for an environment that is ready (CI, the
# test suite): no scripts/setup.sh (pip, apt-get), and the demo data builder gets
# --no-install (no apt-get; voices missing are synthesised). Python is then
# $GALR_PYTHON, default .venv/bin/python.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${GALR_SKIP_SETUP:-0}" = 1 ]; then
  PY=${GALR_PYTHON:-.venv/bin/python}
  DEMO_DATA_OPTIONS=(--no-install)
  echo "GALR_SKIP_SETUP=1: no setup, no installation; Python: $PY"
else
  bash scripts/setup.sh
  PY=.venv/bin/python
  DEMO_DATA_OPTIONS=()
fi
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
# Two virtual CPU devices: the pmap step then keeps both cores busier (about 18% faster on
# 2 cores than one device with XLA's intra-op threads).
export XLA_FLAGS=${XLA_FLAGS:---xla_force_host_platform_device_count=2}
DATA=${DATA:-data/demo}
WORKDIR=${WORKDIR:-runs/demo}

# This form of an empty array, because set -u rejects "${array[@]}" in bash < 4.4.
$PY -m galr_jax.data.demo --out "$DATA" ${DEMO_DATA_OPTIONS[@]+"${DEMO_DATA_OPTIONS[@]}"}
$PY train.py --config configs/demo.yaml --workdir "$WORKDIR" --set data.root="$DATA" "$@"
$PY eval.py --workdir "$WORKDIR" --data "$DATA" --split tt
# The figure that says whether the model separates voices: the real-voice pool's held-out
# speakers (docs/pretrained.md), real people from recording chains the demo's voices do not
# include. The pool is built once, from the Debian speech packages scripts/setup.sh installs;
# POOL_OPTIONS go to its builder (the test suite builds a small one).
REAL_DATA=${REAL_DATA:-data/realpool}
# shellcheck disable=SC2086  # POOL_OPTIONS are separate words
# info.json is written last, so a build that was interrupted is built again.
if [ -f "$REAL_DATA/info.json" ] || $PY -m galr_jax.data.pool --out "$REAL_DATA" --overwrite ${POOL_OPTIONS:-}; then
  $PY eval.py --workdir "$WORKDIR" --data "$REAL_DATA" --split tt --out "$WORKDIR/eval/real_tt"
  REAL_SCORES=" and $WORKDIR/eval/real_tt/summary.json (held-out real speakers)"
else
  echo "note: the real-voice pool could not be built (the builder says why above; usually the Debian speech packages are missing), so there is no held-out real-speaker figure" >&2
  REAL_SCORES=""
fi
# A glob, not `ls | head`: head exits after one line, ls then dies of SIGPIPE, and pipefail
# ended the script here, before the separation, in most runs.
mixtures=("$DATA"/tt/mix/*.wav)
example=${mixtures[0]}
$PY -m galr_jax.inference.cli --workdir "$WORKDIR" "$example" --out "$WORKDIR/separated" --force
echo "Separated $example into $WORKDIR/separated/; scores in $WORKDIR/eval/tt/summary.json$REAL_SCORES"
