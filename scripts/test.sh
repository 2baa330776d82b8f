#!/usr/bin/env bash
# The test suite, as CI runs it (real models included; see README "Tests").
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m pytest -q --durations=30 "$@"
