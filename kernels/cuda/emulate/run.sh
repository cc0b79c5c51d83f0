#!/usr/bin/env bash
# Runs the CUDA kernels' source on the CPU (emu.h) against references: a logic check for
# machines without a GPU, where scripts/gpu-check.sh cannot run. Needs g++ >= 10; no CUDA.
#   kernels/cuda/emulate/run.sh [case-name filter for the attention cases]
set -euo pipefail
cd "$(dirname "$0")"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for t in ops_test attention_test; do
  g++ -std=c++20 -O2 -Iinclude -o "$out/$t" "$t.cpp"
done
g++ -std=c++20 -O2 -Iinclude -DMMA -o "$out/attention_mma_test" attention_test.cpp
"$out/ops_test"
"$out/attention_test" "$@"
"$out/attention_mma_test" "$@"
