#!/usr/bin/env bash
# The whole test suite, from a fresh checkout: fetches and verifies the real test data
# (cached under ~/.cache/qwen-serve), then runs every workspace test.
set -euo pipefail
cd "$(dirname "$0")/.."
export QWEN_SERVE_TEST_DATA="$(bash scripts/fetch-test-data.sh)"
cargo test --workspace "$@"
