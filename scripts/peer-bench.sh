#!/usr/bin/env bash
# qwen-serve side by side with llama.cpp's llama-server on this CPU: the same GGUF (the test
# model), the same thread count, the same token-id prompts, the same client
# (`qwen-serve bench --server`), each server alone on loopback in turn.
#
#   scripts/peer-bench.sh [--json PATH] [--runs N] [--threads N] [--model GGUF --kv-token-bytes N]
#                         [--kv-cache-dtype f32|f16|bf16] [--long-prompt N] [--sampled]
#
# --model: another GGUF instead of the test model (e.g. the MoE one from
# scripts/make_moe_bench_model.py); --kv-token-bytes: its f32 KV cache bytes per token
# (layers x 2 x KV heads x head dim x 4), so both servers get the same KV capacity.
# --kv-cache-dtype: qwen-serve's cache dtype (default f32, its default for a GGUF on the CPU;
# f16 is llama-server's), its size scaled to hold the same tokens.
# --long-prompt N: also, per run, each server restarted with one slot of N + 192 tokens (the
# same KV capacity for both) measures prefill of an N-token prompt (median of 2) and one
# stream's decode right after an N-token prompt (2 requests of 64 output tokens).
# --sampled: the throughput levels sample with Qwen's recommended settings (temperature 0.7,
# top-p 0.8, top-k 20; min-p 0, so llama-server's own 0.05 is off) instead of greedy.
#
# Measures, per server: single-stream decode tok/s (1 stream, prompt 128, output 128; 1000 /
# median TPOT), prefill tok/s (512-token prompt, max_tokens 1, median of 3), aggregate output
# tok/s and TTFT p50/p99 at 4 and 16 streams (prompt 128, output 128, 2 x concurrency
# requests), and the server's peak RSS (VmHWM just before it is stopped). The whole thing runs
# RUNS times (default 3); the table shows medians and the ratio qwen-serve / llama-server.
# Writes Markdown to stdout and JSON to --json (default bench-results/peer.json).
#
# Environment: RUNS, THREADS (default 2), LLAMA_SERVER (a llama-server binary to use instead
# of building one with scripts/build-llama-server.sh), PORT (default 18431; PORT+1 is used too),
# QUIET_WAIT (seconds to wait for other processes to go quiet before each measurement, 600).
#
# Measure on a quiet machine. llama-server's OpenMP threads spin-wait for each other: when
# another process takes one of the cores, its speed collapses (~1 tok/s decode instead of ~10
# seen with a compile running next door, and far less than on a quiet machine).
# OMP_WAIT_POLICY=passive in the environment makes it robust to that, at some cost when quiet.
# The report says how much CPU time other processes took during the measurements.
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${RUNS:-3}"
threads="${THREADS:-2}"
json="bench-results/peer.json"
port="${PORT:-18431}"
gguf=""
kv_token_bytes=$(( 24 * 2 * 2 * 64 * 4 ))
kv_dtype=f32
long_len=0
sampling=()
while [ $# -gt 0 ]; do
  case "$1" in
    --json) json="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --model) gguf="$2"; shift 2 ;;
    --kv-token-bytes) kv_token_bytes="$2"; shift 2 ;;
    --kv-cache-dtype) kv_dtype="$2"; shift 2 ;;
    --sampled) sampling=(--temperature 0.7 --top-p 0.8 --top-k 20); shift ;;
    --long-prompt)
      case "${2:-}" in ''|*[!0-9]*) echo "--long-prompt: a number of tokens, not '${2:-}'" >&2; exit 2 ;; esac
      long_len="$2"; shift 2 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

prompt_len=128
output_len=128
prefill_len=512
levels=1,4,16
parallel=16
# llama-server splits its context among its slots: each must hold the longest request.
slot_ctx=$(( (prefill_len + 1 > prompt_len + output_len ? prefill_len + 1 : prompt_len + output_len) + 64 ))
ctx=$(( parallel * slot_ctx ))
# The same KV capacity for qwen-serve: ctx tokens of the model's f32 cache (the test model:
# 24 layers x K and V x 2 KV heads x 64 dims x 4 bytes = 24 KiB a token) instead of its 2 GiB
# default.
case "$kv_dtype" in
  f32) kv_scale=1 ;;
  f16|bf16) kv_scale=2 ;;
  *) echo "--kv-cache-dtype: f32, f16 or bf16, not $kv_dtype" >&2; exit 2 ;;
esac
kv_gib=$(python3 -c "print(f'{$ctx * $kv_token_bytes / $kv_scale / 2**30:.4f}')")
long_ctx=$(( long_len + 192 ))
long_kv_gib=$(python3 -c "print(f'{$long_ctx * $kv_token_bytes / $kv_scale / 2**30:.4f}')")

[ -n "$gguf" ] || gguf="$(bash scripts/fetch-test-data.sh)/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
echo "building qwen-serve (release)…" >&2
cargo build --release --quiet >&2
qwen=target/release/qwen-serve
# What was measured: the tree as built now (others may commit while this runs).
commit="$(git log -1 --oneline 2>/dev/null || echo unknown)"
num_dirty="$(git status --short 2>/dev/null | wc -l)"

llama="${LLAMA_SERVER:-}"
if [ -z "$llama" ]; then
  llama=$(bash scripts/build-llama-server.sh) || llama=""
fi
if [ -z "$llama" ] || [ ! -x "$llama" ]; then
  echo "NOTE: llama-server is not available (its build failed or was skipped): benchmarking qwen-serve alone" >&2
  llama=""
fi

work=$(mktemp -d)
pid=""
stop_server() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  pid=""
}
trap 'stop_server; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

# start_server NAME PORT [long]: starts it in the background (pid in $pid) and waits for
# /health; `long`: one slot for the --long-prompt measurement instead of the main workload's.
start_server() {
  local name=$1 p=$2 log="$work/$1.log" kv=$kv_gib slots=$parallel slots_ctx=$ctx
  [ "${3:-}" = long ] && { kv=$long_kv_gib; slots=1; slots_ctx=$long_ctx; }
  case "$name" in
    qwen-serve)
      # --threads (QWEN_SERVE_THREADS) where this build has it, else rayon's own variable.
      QWEN_SERVE_THREADS="$threads" RAYON_NUM_THREADS="$threads" "$qwen" serve --model "$gguf" --host 127.0.0.1 --port "$p" \
        --kv-cache-memory "$kv" --kv-cache-dtype "$kv_dtype" 2>"$log" >&2 &
      ;;
    llama-server)
      # --cache-ram 0: no host-memory copies of finished slots' KV (it would grow RSS and
      # qwen-serve has no such cache). --no-webui: nothing to serve.
      "$llama" -m "$gguf" --host 127.0.0.1 --port "$p" -t "$threads" -tb "$threads" \
        --parallel "$slots" -c "$slots_ctx" --cont-batching --cache-ram 0 --no-webui 2>"$log" >&2 &
      ;;
  esac
  pid=$!
  for _ in $(seq 600); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "error: $name exited during startup; its log:" >&2; tail -20 "$log" >&2; exit 1
    fi
    # llama-server answers 503 while loading; -f fails on it.
    curl -sf "http://127.0.0.1:$p/health" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "error: $name did not become healthy in 300 s; its log:" >&2; tail -20 "$log" >&2; exit 1
}

# Machine-wide busy and idle jiffies; a process's own (user + system) jiffies.
cpu_jiffies() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6}' /proc/stat; }
proc_jiffies() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Waits (up to QUIET_WAIT seconds, default 600) until other processes use under 15% of the
# CPUs over 3 s: a compile next door halves any number measured here.
wait_quiet() {
  local deadline=$(( $(date +%s) + ${QUIET_WAIT:-600} )) b0 i0 b1 i1 busy
  while :; do
    read -r b0 i0 < <(cpu_jiffies); sleep 3; read -r b1 i1 < <(cpu_jiffies)
    busy=$(( 100 * (b1 - b0) / (b1 - b0 + i1 - i0 + 1) ))
    [ "$busy" -lt 15 ] && return 0
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "WARNING: the machine is still ${busy}% busy with other work; measuring anyway" >&2
      return 0
    fi
    echo "waiting for a quiet machine (${busy}% busy)…" >&2
    sleep 10
  done
}

servers="qwen-serve${llama:+ llama-server}"
for run in $(seq "$runs"); do
  for name in $servers; do
    p=$port; [ "$name" = llama-server ] && p=$((port + 1))
    echo "run $run/$runs: $name on 127.0.0.1:$p…" >&2
    start_server "$name" "$p"
    wait_quiet
    # Other work on the machine skews everything: keep its CPU time next to the numbers.
    read -r b0 i0 < <(cpu_jiffies); s0=$(proc_jiffies "$pid")
    "$qwen" bench --server "http://127.0.0.1:$p" --model "$gguf" \
      --concurrency "$levels" --prompt-len "$prompt_len" --output-len "$output_len" "${sampling[@]}" \
      --prefill-len "$prefill_len" --prefill-runs 3 --json "$work/$name-$run.json" >&2
    read -r b1 i1 < <(cpu_jiffies); s1=$(proc_jiffies "$pid")
    # Percent of all CPU time during the measurement spent outside the server (the bench
    # client's small share included).
    echo $(( 100 * (b1 - b0 - (s1 - s0)) / (b1 - b0 + i1 - i0 + 1) )) > "$work/$name-$run.other_pct"
    awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" > "$work/$name-$run.rss_kb"
    stop_server
    if [ "$long_len" -gt 0 ]; then
      echo "run $run/$runs: $name, one $long_len-token prompt…" >&2
      start_server "$name" "$p" long
      wait_quiet
      "$qwen" bench --server "http://127.0.0.1:$p" --model "$gguf" --concurrency 1 --num-prompts 2 \
        --prompt-len "$long_len" --output-len 64 --prefill-len "$long_len" --prefill-runs 2 \
        --json "$work/$name-$run.long.json" >&2
      stop_server
    fi
  done
done

mkdir -p "$(dirname "$json")"
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
isa=$(grep -m1 '^flags' /proc/cpuinfo | grep -o -w -E 'avx2|avx512f|avx512_vnni|avx512_bf16|amx_int8' | tr '\n' ' ' | sed 's/ $//' || true)
[ -n "$isa" ] && cpu="$cpu ($isa)"
WORK="$work" RUNS="$runs" THREADS="$threads" CPU="$cpu" JSON="$json" SERVERS="$servers" \
  LLAMA="$llama" CTX="$ctx" KV_GIB="$kv_gib" KV_DTYPE="$kv_dtype" PARALLEL="$parallel" \
  COMMIT="$commit" DIRTY="$num_dirty" MODEL="$(basename "$gguf")" LONG_LEN="$long_len" SAMPLING="${sampling[*]}" \
  LLAMA_VERSION="$( [ -n "$llama" ] && "$llama" --version 2>&1 | grep -m1 '^version' || true)" \
  python3 - <<'PY'
import json, os, statistics

env = os.environ
work, runs, servers = env["WORK"], int(env["RUNS"]), env["SERVERS"].split()

def metrics(results, rss_kb):
    by_c = {r["concurrency"]: r for r in results["reports"]}
    one, four, sixteen = by_c[1], by_c[4], by_c[16]
    return {
        "decode_tok_per_s_1": 1000.0 / one["tpot_ms"]["p50"],
        "ttft_p50_ms_1": one["ttft_ms"]["p50"],
        "prefill_tok_per_s_512": results["prefill"]["prefill_tok_per_s"],
        "output_tok_per_s_4": four["output_tok_per_s"],
        "ttft_p50_ms_4": four["ttft_ms"]["p50"],
        "ttft_p99_ms_4": four["ttft_ms"]["p99"],
        "output_tok_per_s_16": sixteen["output_tok_per_s"],
        "ttft_p50_ms_16": sixteen["ttft_ms"]["p50"],
        "ttft_p99_ms_16": sixteen["ttft_ms"]["p99"],
        "tpot_p50_ms_16": sixteen["tpot_ms"]["p50"],
        "peak_rss_mib": rss_kb / 1024.0,
    }

rows = [
    ("decode_tok_per_s_1", "single-stream decode tok/s (128 in / 128 out; 1000 / TPOT p50)", "{:.1f}"),
    ("ttft_p50_ms_1", "single-stream TTFT p50 (ms)", "{:.0f}"),
    ("prefill_tok_per_s_512", "prefill tok/s (512-token prompt, median of 3)", "{:.1f}"),
    ("output_tok_per_s_4", "4 streams: output tok/s", "{:.1f}"),
    ("ttft_p50_ms_4", "4 streams: TTFT p50 (ms)", "{:.0f}"),
    ("ttft_p99_ms_4", "4 streams: TTFT p99 (ms)", "{:.0f}"),
    ("output_tok_per_s_16", "16 streams: output tok/s", "{:.1f}"),
    ("ttft_p50_ms_16", "16 streams: TTFT p50 (ms)", "{:.0f}"),
    ("ttft_p99_ms_16", "16 streams: TTFT p99 (ms)", "{:.0f}"),
    ("tpot_p50_ms_16", "16 streams: TPOT p50 (ms)", "{:.1f}"),
    ("peak_rss_mib", "peak RSS (MiB, VmHWM)", "{:.0f}"),
]
long_len = int(env["LONG_LEN"])
if long_len:
    rows += [
        ("prefill_tok_per_s_long", f"prefill tok/s ({long_len}-token prompt, median of 2)", "{:.1f}"),
        ("decode_tok_per_s_long", f"single-stream decode tok/s after a {long_len}-token prompt (1000 / TPOT p50)", "{:.1f}"),
    ]

def long_metrics(results):
    one = results["reports"][0]
    return {"prefill_tok_per_s_long": results["prefill"]["prefill_tok_per_s"], "decode_tok_per_s_long": 1000.0 / one["tpot_ms"]["p50"]}

per_run, medians, raw = {}, {}, {}
for s in servers:
    per_run[s] = []
    raw[s] = []
    for run in range(1, runs + 1):
        with open(f"{work}/{s}-{run}.json") as f:
            results = json.load(f)
        with open(f"{work}/{s}-{run}.rss_kb") as f:
            rss_kb = float(f.read().strip() or "nan")
        with open(f"{work}/{s}-{run}.other_pct") as f:
            other_pct = float(f.read().strip())
        run_metrics = metrics(results, rss_kb) | {"other_cpu_pct": other_pct}
        if long_len:
            with open(f"{work}/{s}-{run}.long.json") as f:
                long_results = json.load(f)
            results = {"main": results, "long_prompt": long_results}
            run_metrics |= long_metrics(long_results)
        raw[s].append(results)
        per_run[s].append(run_metrics)
    medians[s] = {k: statistics.median(m[k] for m in per_run[s]) for k, _, _ in rows}

both = "llama-server" in medians
others = [m["other_cpu_pct"] for s in servers for m in per_run[s]]


ratios = {k: medians["qwen-serve"][k] / medians["llama-server"][k] for k, _, _ in rows} if both else None

out = {
    "cpu": env["CPU"],
    "threads": int(env["THREADS"]),
    "runs": runs,
    "model": env["MODEL"],
    "git": {"head": env["COMMIT"], "num_changed_paths": int(env["DIRTY"])},
    "workload": {"prompt_len": 128, "output_len": 128, "prefill_len": 512, "concurrency": [1, 4, 16], "long_prompt_len": long_len or None,
                 "sampling": env["SAMPLING"] or "greedy"},
    "qwen_serve": {"kv_cache_memory_gib": float(env["KV_GIB"]), "kv_cache_dtype": env["KV_DTYPE"]},
    "llama_server": {"binary": env["LLAMA"] or None, "version": env["LLAMA_VERSION"], "parallel": int(env["PARALLEL"]), "ctx": int(env["CTX"])} if both else None,
    "median": medians,
    "ratio_qwen_over_llama": ratios,
    "per_run": per_run,
    "raw": raw,
}
with open(env["JSON"], "w") as f:
    json.dump(out, f, indent=2)

print(f"CPU: {env['CPU']}; {env['THREADS']} threads per server; median of {runs} run(s); {env['SAMPLING'] or 'greedy'}; qwen-serve at {env['COMMIT']}"
      + (f" + {env['DIRTY']} uncommitted path(s)" if env["DIRTY"] != "0" else ""))
print(f"CPU time outside the measured server during the measurements (bench client included): "
      f"{min(others):.0f}% to {max(others):.0f}% of the machine" + (" -- OTHER WORK WAS RUNNING" if max(others) > 15 else ""))
if both:
    print(f"llama-server ({env['LLAMA_VERSION']}, llama-cpp-python sdist): {env['LLAMA']} -t {env['THREADS']} -tb {env['THREADS']} --parallel {env['PARALLEL']} "
          f"-c {env['CTX']} --cont-batching --cache-ram 0; qwen-serve: --threads {env['THREADS']} (RAYON_NUM_THREADS) "
          f"--kv-cache-memory {env['KV_GIB']} --kv-cache-dtype {env['KV_DTYPE']} (the same {env['CTX']} tokens)")
print()
if both:
    print("| metric | qwen-serve | llama-server | qwen / llama |")
    print("|---|---|---|---|")
    for k, label, fmt in rows:
        q, l = medians["qwen-serve"][k], medians["llama-server"][k]
        print(f"| {label} | {fmt.format(q)} | {fmt.format(l)} | {ratios[k]:.2f} |")
    print()
    print("tok/s: higher is better; ms and MiB: lower is better.")
else:
    print("| metric | qwen-serve |")
    print("|---|---|")
    for k, label, fmt in rows:
        print(f"| {label} | {fmt.format(medians['qwen-serve'][k])} |")
    print()
    print("llama-server was not available: qwen-serve alone.")
print(f"JSON: {env['JSON']}")
PY
