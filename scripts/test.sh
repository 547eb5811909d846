#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh) and runs the whole test suite on the CPU.
# Tests run in GALR_TEST_WORKERS processes (default 2, pytest-xdist; 0 runs them in this
# process): most of their time is XLA compiling, which uses one core, so two workers on two
# cores take little more than half the time of one. A file's tests stay in one worker
# (--dist loadfile), so its module fixtures are built once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export JAX_PLATFORMS=cpu
exec .venv/bin/python -m pytest -q -n "${GALR_TEST_WORKERS:-2}" --dist loadfile "$@"
