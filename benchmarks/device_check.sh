#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU: install, check, measure, write one folder.
#
#   bash benchmarks/device_check.sh [OUT_DIR]
#
# From the repository root, it
#   1. stops at once unless nvidia-smi lists a GPU;
#   2. creates a virtual environment ($VENV, default .venv-device) and installs
#      .[cuda12,dev] (jax with the CUDA 12 plugin, the PyTorch reference);
#   3. prints the devices JAX and PyTorch see, and stops unless JAX's backend is the GPU;
#   4. runs the torch parity tests (tests/test_parity.py: JAX on the GPU against PyTorch
#      on CUDA) and the export/lowering tests (tests/test_export.py) on the GPU;
#   5. runs the step benchmark (benchmarks/run.py: forward and train step of JAX and
#      PyTorch, peak memory, compile time) for galr_1.5m and dprnn at 4 s, float32 and
#      bfloat16, and for each kernel choice when the config has one ($KERNEL_KEY);
#   6. writes OUT_DIR/device_check.json: every stage's command, exit status and seconds,
#      the devices, and the benchmark results.
# Each stage has its own time limit ($STAGE_TIMEOUT seconds, default 600; the install
# $INSTALL_TIMEOUT, default 1200). A failed test or benchmark stage does not stop the
# later ones; the script exits 1 at the end if any stage failed.
#
# Environment: PYTHON (default python3, >= 3.11), VENV, STAGE_TIMEOUT, INSTALL_TIMEOUT,
# KERNEL_KEY (default runtime.kernels), KERNEL_CHOICES (default "reference tuned").
set -euo pipefail

readonly OUT="${1:-device-check-$(date -u +%Y%m%dT%H%M%SZ)}"
readonly PYTHON="${PYTHON:-python3}"
readonly VENV="${VENV:-.venv-device}"
readonly STAGE_TIMEOUT="${STAGE_TIMEOUT:-600}"
readonly INSTALL_TIMEOUT="${INSTALL_TIMEOUT:-1200}"
readonly KERNEL_KEY="${KERNEL_KEY:-runtime.kernels}"
read -r -a KERNEL_CHOICES <<< "${KERNEL_CHOICES:-reference tuned}"
readonly CONFIGS=(galr_1.5m dprnn)
readonly SECONDS_OF_AUDIO=4

die() {
    echo "device_check: $*" >&2
    exit 2
}

[[ -f setup.cfg && -d galr_jax ]] || die "run it from the repository root (no setup.cfg/galr_jax here)"
command -v nvidia-smi > /dev/null || die "nvidia-smi not found: this check needs an NVIDIA GPU and its driver"
nvidia-smi -L | grep -q '^GPU ' || die "nvidia-smi lists no GPU"
command -v timeout > /dev/null || die "timeout (coreutils) not found"

mkdir -p "$OUT"
readonly STAGES="$OUT/stages.tsv"
printf 'stage\tstatus\tseconds\tcommand\n' > "$STAGES"
failed=()

# run_stage NAME TIMEOUT COMMAND...: runs COMMAND under TIMEOUT seconds, its output in
# OUT/NAME.log (and on the terminal); records the status; never exits the script.
run_stage() {
    local name="$1" limit="$2"
    shift 2
    echo "== $name (limit ${limit} s): $*"
    local start status=0
    start=$(date +%s)
    timeout --kill-after=30 "$limit" "$@" 2>&1 | tee "$OUT/$name.log" || status=${PIPESTATUS[0]}
    local took=$(( $(date +%s) - start ))
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$took" "$*" >> "$STAGES"
    if (( status != 0 )); then
        [[ $status -eq 124 || $status -eq 137 ]] && echo "== $name: timed out after ${limit} s" >&2
        echo "== $name FAILED (exit $status), log: $OUT/$name.log" >&2
        failed+=("$name")
    fi
    return 0
}

nvidia-smi | tee "$OUT/nvidia-smi.txt"

# ---- Install ------------------------------------------------------------------------
run_stage install "$INSTALL_TIMEOUT" bash -c \
    "'$PYTHON' -m venv '$VENV' && '$VENV/bin/python' -m pip install --upgrade pip \
     && '$VENV/bin/python' -m pip install -e '.[cuda12,dev]'"
(( ${#failed[@]} == 0 )) || die "the install failed; see $OUT/install.log"
readonly PY="$VENV/bin/python"

# JAX on the GPU only (an error rather than a silent CPU fallback), and without taking
# most of the GPU's memory up front, so PyTorch fits beside it in the benchmark process.
export JAX_PLATFORMS=cuda
export XLA_PYTHON_CLIENT_PREALLOCATE=false

# ---- Devices ------------------------------------------------------------------------
run_stage devices "$STAGE_TIMEOUT" "$PY" -c '
import json, jax, torch
info = {"jax": jax.__version__, "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "torch": torch.__version__, "torch_cuda": torch.cuda.is_available(),
        "torch_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
print(json.dumps(info, indent=1))
assert info["backend"] == "gpu", "JAX does not run on the GPU"
assert info["torch_cuda"], "PyTorch sees no CUDA device"
'
if [[ " ${failed[*]} " == *" devices "* ]]; then
    die "JAX or PyTorch does not see the GPU; see $OUT/devices.log"
fi

# ---- Tests on the GPU ----------------------------------------------------------------
run_stage test_parity "$STAGE_TIMEOUT" "$PY" -m pytest -q -x tests/test_parity.py
run_stage test_export "$STAGE_TIMEOUT" "$PY" -m pytest -q -x tests/test_export.py

# ---- Step benchmarks -------------------------------------------------------------------
# Kernel choices only where this version's config has the key.
kernel_overrides=("")
if "$PY" -c "
import sys
from galr_jax.config import config_from_dict
section, key = sys.argv[1].split('.')
config_from_dict({section: {key: sys.argv[2]}})
" "$KERNEL_KEY" "${KERNEL_CHOICES[0]}" > /dev/null 2>&1; then
    kernel_overrides=()
    for choice in "${KERNEL_CHOICES[@]}"; do
        kernel_overrides+=("$KERNEL_KEY=$choice")
    done
else
    echo "== $KERNEL_KEY is not a config key in this version: benchmarking its one kernel set"
fi

for dtype in float32 bfloat16; do
    for kernels in "${kernel_overrides[@]}"; do
        name="bench_${dtype}${kernels:+_${kernels##*=}}"
        overrides=(--set "runtime.compute_dtype=$dtype")
        [[ -n "$kernels" ]] && overrides+=("$kernels")
        run_stage "$name" "$STAGE_TIMEOUT" "$PY" benchmarks/run.py --quick \
            --configs "${CONFIGS[@]}" --seconds "$SECONDS_OF_AUDIO" \
            --out "$OUT/$name.json" "${overrides[@]}"
    done
done

# ---- One JSON ----------------------------------------------------------------------------
"$PY" - "$OUT" <<'EOF'
import csv, glob, json, os, sys

out = sys.argv[1]
with open(os.path.join(out, "stages.tsv")) as f:
    stages = list(csv.DictReader(f, delimiter="\t"))
benchmarks = {}
for path in sorted(glob.glob(os.path.join(out, "bench_*.json"))):
    with open(path) as f:
        benchmarks[os.path.basename(path)[:-len(".json")]] = json.load(f)
devices = None
try:
    with open(os.path.join(out, "devices.log")) as f:
        text = f.read()
    devices = json.loads(text[text.index("{"):text.rindex("}") + 1])
except (OSError, ValueError):
    pass
summary = {"stages": stages, "devices": devices, "benchmarks": benchmarks}
with open(os.path.join(out, "device_check.json"), "w") as f:
    json.dump(summary, f, indent=1)
print(f"wrote {os.path.join(out, 'device_check.json')}")
EOF

if (( ${#failed[@]} )); then
    echo "device_check: FAILED stages: ${failed[*]} (logs in $OUT)" >&2
    exit 1
fi
echo "device_check: all stages passed; results in $OUT"
