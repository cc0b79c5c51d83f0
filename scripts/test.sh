#!/usr/bin/env bash
# The whole test suite, from a fresh checkout: fetches and verifies the real test data and
# the pinned `openai` Python SDK (both cached under ~/.cache/qwen-serve), then runs every
# workspace test and the CUDA kernels' emulation on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${QWEN_SERVE_CACHE:-$HOME/.cache/qwen-serve}"
export QWEN_SERVE_TEST_DATA="$(bash scripts/fetch-test-data.sh)"

venv="$cache/sdk-venv"
stamp="$venv/.requirements"
if ! cmp -s tests/openai_sdk/requirements.txt "$stamp" 2>/dev/null; then
  echo "installing the openai SDK into $venv…" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/openai_sdk/requirements.txt >&2
  cp tests/openai_sdk/requirements.txt "$stamp"
fi
export QWEN_SERVE_SDK_PYTHON="$venv/bin/python"

cargo test --workspace "$@"

# The CUDA kernels' source run on the CPU (kernels/cuda/emulate): no GPU or nvcc needed, only
# g++, so their logic stays checked on every machine (~1.5 min on 2 cores).
echo "kernels/cuda/emulate/run.sh…" >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
bash kernels/cuda/emulate/run.sh > "$log" 2>&1 || { cat "$log"; exit 1; }
grep -h "failures" "$log" >&2
