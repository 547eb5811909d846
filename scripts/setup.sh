#!/usr/bin/env bash
# Creates .venv with galr-jax, its test extras and the CPU build of PyTorch, from scratch.
# Also installs the Debian packages of recorded speech the demo data uses, when this user
# may (root with apt-get); without them the demo falls back to synthetic voices.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
"$PYTHON" - <<'PY' || { echo "galr-jax needs Python 3.11 (jax 0.10.2 / flax 0.12.8 are the newest for 3.11; newer ones need 3.12)" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info[:2] >= (3, 11) else 1)
PY

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"

# Recorded speech: the Asterisk prompts (the demo data) and the other packages the real-voice
# pool uses (python -m galr_jax.data.pool; it reports which it found). Failure is tolerated:
# the builders fall back to what is present and say so.
SPEECH_PACKAGES="asterisk-core-sounds-en-wav asterisk-core-sounds-fr-wav asterisk-core-sounds-it-wav
asterisk-core-sounds-ru-wav asterisk-core-sounds-es-wav asterisk-prompt-it-menardi-wav
asterisk-prompt-es-co asterisk-prompt-fr-armelle klettres-data ktuberling-data kajongg
codec2-examples festvox-ru pocketsphinx-testdata"
if [ -d /usr/share/asterisk/sounds ] && [ -d /usr/share/klettres ] && [ -d /usr/share/codec2 ]; then
  :
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing recorded speech (Debian packages: Asterisk prompts, klettres, ktuberling, kajongg, codec2, festvox-ru, pocketsphinx)..."
  # shellcheck disable=SC2086
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $SPEECH_PACKAGES >/dev/null) \
    || echo "warning: could not install the speech packages; the demo data will use synthetic voices only" >&2
else
  echo "note: not root; the demo data will use synthetic voices only (see docs/demo-recipe.md, 'Demo data')" >&2
fi
echo "Environment ready: $(.venv/bin/python -c 'import jax, flax, optax, orbax.checkpoint as o; print(f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}")')"
