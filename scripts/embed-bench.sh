#!/usr/bin/env bash
# Embeddings (`/v1/embeddings`, last-token pooling, normalised) from qwen-serve and from
# llama.cpp's llama-server (`--embeddings --pooling last`) on the test GGUF, each alone on
# loopback with the same threads, measured by scripts/embed_bench.py with the same token ids;
# then the cosine between the two servers' vectors for 8 inputs of 16 to 184 tokens.
#
#   scripts/embed-bench.sh [--runs N] [--threads N]
#
# Environment: LLAMA_SERVER (a llama-server binary; default: scripts/build-llama-server.sh's),
# PORT (default 18441). Measure on a quiet machine (see scripts/peer-bench.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

runs=1
threads="${THREADS:-2}"
port="${PORT:-18441}"
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

gguf="$(bash scripts/fetch-test-data.sh)/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
cargo build --release --quiet >&2
qwen=target/release/qwen-serve
llama="${LLAMA_SERVER:-$(bash scripts/build-llama-server.sh)}"
work=$(mktemp -d)
pid=""
stop() { [ -n "$pid" ] && { kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }; pid=""; }
trap 'stop; rm -rf "$work"' EXIT

for run in $(seq "$runs"); do
  for name in qwen-serve llama-server; do
    case "$name" in
      qwen-serve) QWEN_SERVE_THREADS="$threads" "$qwen" serve --model "$gguf" --host 127.0.0.1 --port "$port" 2>"$work/$name.log" & ;;
      # 16 slots of 512 tokens; a batch as large as the longest input (embeddings need the
      # whole input in one micro-batch).
      llama-server) "$llama" -m "$gguf" --host 127.0.0.1 --port "$port" -t "$threads" -tb "$threads" --embeddings --pooling last \
          --parallel 16 -c 8192 -b 2048 -ub 2048 --cache-ram 0 --no-webui 2>"$work/$name.log" & ;;
    esac
    pid=$!
    up=""
    for _ in $(seq 600); do
      curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && { up=1; break; }
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if [ -z "$up" ]; then
      echo "$name did not come up on port $port; its log:" >&2
      cat "$work/$name.log" >&2
      exit 1
    fi
    echo "run $run: $name" >&2
    python3 scripts/embed_bench.py "http://127.0.0.1:$port" --json "$work/$name-$run.json" --vectors "$work/$name.vectors.json" >&2
    stop
  done
done

python3 - "$work" "$runs" <<'EOF'
import json, statistics, sys
work, runs = sys.argv[1], int(sys.argv[2])
rows = [("one 128-token input: latency p50 (ms)", "single_ms_p50"), ("64 inputs in one request: inputs/s", "batch64_inputs_per_s"),
        ("64 inputs in one request: tokens/s", "batch64_tokens_per_s"), ("16 clients, single inputs: inputs/s", "concurrent16_inputs_per_s")]
res = {n: [json.load(open(f"{work}/{n}-{r}.json")) for r in range(1, runs + 1)] for n in ("qwen-serve", "llama-server")}
print("| measure (median of %d runs) | qwen-serve | llama-server | qwen-serve / llama-server |\n|---|---|---|---|" % runs)
for label, key in rows:
    q, l = (statistics.median(x[key] for x in res[n]) for n in ("qwen-serve", "llama-server"))
    better = "lower is better" if key.endswith("_ms_p50") else "higher is better"
    print(f"| {label} | {q:.1f} | {l:.1f} | {q / l:.2f} ({better}) |")
a, b = (json.load(open(f"{work}/{n}.vectors.json")) for n in ("qwen-serve", "llama-server"))
cos = [sum(x * y for x, y in zip(u, v)) for u, v in zip(a, b)]
print(f"\ncosine between the servers' embeddings of 8 inputs: min {min(cos):.5f}, mean {statistics.mean(cos):.5f}")
EOF
