#!/usr/bin/env bash
# Grammar-held decoding (llama.cpp's json.gbnf through `/completion`, greedy) on qwen-serve and
# on llama.cpp's llama-server, each alone on loopback with the same threads and the test GGUF,
# measured by scripts/grammar_bench.py: one stream with and without the grammar, and 16
# concurrent streams with it (16 slots each).
#
#   scripts/grammar-bench.sh [--runs N] [--threads N]
#
# Environment: LLAMA_SERVER (a llama-server binary; default: scripts/build-llama-server.sh's),
# PORT (default 18451). Measure on a quiet machine (see scripts/peer-bench.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

runs=1
threads="${THREADS:-2}"
port="${PORT:-18451}"
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
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
      llama-server) "$llama" -m "$gguf" --host 127.0.0.1 --port "$port" -t "$threads" -tb "$threads" --parallel 16 -c 8192 --no-webui 2>"$work/$name.log" & ;;
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
    python3 scripts/grammar_bench.py "http://127.0.0.1:$port" --json "$work/$name-$run.json" >&2
    stop
  done
done

python3 - "$work" "$runs" <<'PY'
import json, statistics, sys
work, runs = sys.argv[1], int(sys.argv[2])
rows = [("1 stream, no grammar: tok/s", "single_free"), ("1 stream, json.gbnf: tok/s", "single_grammar"), ("16 streams, json.gbnf: aggregate tok/s", "concurrent16_grammar")]
res = {n: [json.load(open(f"{work}/{n}-{r}.json")) for r in range(1, runs + 1)] for n in ("qwen-serve", "llama-server")}
print("| measure (median of %d runs) | qwen-serve | llama-server | ratio |\n|---|---|---|---|" % runs)
for label, key in rows:
    q, l = (statistics.median(x[key]["tok_per_s"] for x in res[n]) for n in ("qwen-serve", "llama-server"))
    print(f"| {label} | {q:.1f} | {l:.1f} | {q / l:.2f} |")
for n in ("qwen-serve", "llama-server"):
    v = res[n][-1]["concurrent16_grammar"]
    print(f"\n{n}: {v['valid_json']} of {v['outputs']} grammar-held outputs of the last run are whole JSON objects", end="")
print()
PY
