#!/usr/bin/env bash
# Run on an H100 80GB HBM3 on 2026-11-26 (~265 s), five times on an H200 on 2026-11-27
# (the last three: a profile of the code then, ~225 s; a check of the changes it led to, ~315 s;
# a short rerun after one more attention change, ~145 s), then twice on an H100 the same day
# (~220 s with transformers at 256 only; ~375 s with it at every level and two profiles);
# results in benches/results/.
#
# The one-call device check of the CUDA build, in two halves:
#
#   scripts/gpu-check.sh --prepare     here (no GPU): builds the kernel GPU tests and the
#                                      release binary with scripts/build-cuda.sh and packs them,
#                                      xz-compressed, with the tokenizer into target/gpu-carry
#   scripts/gpu-check.sh               there, via the device tool:
#                                      run(command="bash scripts/gpu-check.sh",
#                                          carry=["target/gpu-carry"], timeout_s=570)
#
# On the GPU machine it
#   1. records the GPU, driver and glibc, and puts the CUDA 13 libraries of the PyTorch install
#      (site-packages/nvidia/*/lib) and the driver's libcuda.so.1 on LD_LIBRARY_PATH;
#   2. runs the kernel tests (kernels/tests/gpu.rs: every CUDA op against its CPU reference,
#      f32/bf16/f16, long contexts for the split decode);
#   3. builds random-weight checkpoints with the real Qwen2.5-0.5B and -7B configs and compares
#      qwen-serve's logprobs and greedy text with transformers, then throughput
#      (scripts/gpu_reference.py). This step assumes the binary takes `--device cuda`
#      (override with GPU_CHECK_DEVICE_FLAG); it is skipped, and says so, if `serve --help`
#      shows no --device flag.
# A shorter run: GPU_CHECK_HF (transformers' levels, e.g. "256" or "none"; per model
# GPU_CHECK_HF_05B, GPU_CHECK_HF_7B), GPU_CHECK_VARIANTS
# (A/B runs by name, e.g. "graphs,split_256"), GPU_CHECK_DTYPES_05B/_7B (the dtypes compared with
# transformers, or "none"), GPU_CHECK_LEVELS (the bench's concurrency levels, default
# 1,16,64,256), GPU_CHECK_LIMIT_05B/_7B (s).
# GPU_CHECK_STEPS (default "kernels 0.5b 7b"; also "profile", see step 4) picks steps. Their limits (100 + 45 + 45 + 190
# + 285 s) fit one call of timeout_s=600 (the kernel tests took ~60 s on 2026-11-27); if the 7B step
# runs out, rerun with GPU_CHECK_STEPS=7b. GPU_CHECK_VARIANTS=none runs no A/B variant.
# Results go to $OUT (summary.json, kernel-tests.txt, model-*.json, env.txt); each step has its
# own time limit so a slow step still leaves the others' results.
set -uo pipefail
cd "$(dirname "$0")/.."
carry=target/gpu-carry

if [ "${1:-}" = "--prepare" ]; then
  set -e
  dir=$(bash scripts/build-cuda.sh --bin qwen-serve)
  # With qwen-serve selected too, so dependencies get the binary's features and are reused.
  QWEN_SERVE_CARGO=test bash scripts/build-cuda.sh --no-run -p qwen-serve -p qwen-serve-kernels -p qwen-serve-models \
    --test gpu --test gguf_devices > /dev/null
  tests=$(ls -t "$dir"/deps/gpu-* | grep -v '\.d$' | head -1)
  gguf_tests=$(ls -t "$dir"/deps/gguf_devices-* | grep -v '\.d$' | head -1)
  rm -rf "$carry" && mkdir -p "$carry"
  # Stripped (no line numbers in backtraces) and xz'd: ~95 + 170 MB become ~5 + 9 MB; the GPU
  # machine unpacks with python3's lzma, needing no xz there.
  stripped=$(mktemp -d)
  trap 'rm -rf "$stripped"' EXIT
  strip -o "$stripped/kernel-gpu-tests" "$tests"
  strip -o "$stripped/gguf-gpu-tests" "$gguf_tests"
  strip -o "$stripped/qwen-serve" "$dir/qwen-serve"
  xz -T2 -6 -c "$stripped/kernel-gpu-tests" > "$carry/kernel-gpu-tests.xz"
  xz -T2 -6 -c "$stripped/gguf-gpu-tests" > "$carry/gguf-gpu-tests.xz"
  xz -T2 -6 -c "$stripped/qwen-serve" > "$carry/qwen-serve.xz"
  tok="$(bash scripts/fetch-test-data.sh)/qwen3-tokenizer"
  cp "$tok/tokenizer.json" "$tok/tokenizer_config.json" "$carry/"
  du -sh "$carry"/* >&2
  echo "carry: $carry ($(du -sm "$carry" | cut -f1) MB of the 64 MiB a call may carry)" >&2
  exit 0
fi

out="${OUT:-/tmp/gpu-check-out}"
mkdir -p "$out"
work=/tmp/qwen-gpu-check
mkdir -p "$work"
summary="$out/summary.json"
echo '{}' > "$summary"
note() { # note KEY JSON-VALUE: adds one entry to summary.json
  python3 - "$summary" "$1" "$2" <<'EOF'
import json, sys
path, key, value = sys.argv[1:]
d = json.load(open(path))
d[key] = json.loads(value)
json.dump(d, open(path, "w"), indent=1)
EOF
}

# 1. Environment.
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  ldd --version | head -1
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'
} > "$out/env.txt" 2>&1
cat "$out/env.txt"
site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
driver=$(ldconfig -p | awk '/libcuda\.so\.1 /{print $NF; exit}')
paths=$( { ls -d "$site"/nvidia/*/lib 2>/dev/null | grep -v stubs; [ -n "$driver" ] && dirname "$driver"; \
  [ -n "${LD_LIBRARY_PATH:-}" ] && echo "$LD_LIBRARY_PATH"; } | paste -sd: -)
export LD_LIBRARY_PATH="$paths"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >> "$out/env.txt"

for f in kernel-gpu-tests gguf-gpu-tests qwen-serve; do
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    "$carry/$f.xz" "$work/$f" && chmod +x "$work/$f"
done
missing=$(ldd "$work/qwen-serve" | grep 'not found' || true)
note missing_libraries "$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$missing")"
[ -n "$missing" ] && echo "missing libraries: $missing"

want() { case " ${GPU_CHECK_STEPS:-kernels 0.5b 7b} " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# A test binary's output FILE and exit code RC as JSON: {"exit_code", "tests": {name: result}}.
test_results() {
  python3 - "$1" "$2" <<'EOF'
import json, re, sys
text = open(sys.argv[1]).read()
tests = dict(re.findall(r"^test (\S+) \.\.\. (\w+)", text, re.M))
print(json.dumps({"exit_code": int(sys.argv[2]), "tests": tests}))
EOF
}

# 2. Kernel tests, one at a time (each compares with the CPU reference, which is the slow part).
if want kernels; then
timeout 100 "$work/kernel-gpu-tests" --test-threads=1 > "$out/kernel-tests.txt" 2>&1
rc=$?
# Quantized GGUF models (in-memory blocks of six types; a dense Qwen2 and a Qwen3-MoE) on the GPU against the CPU.
timeout 45 "$work/gguf-gpu-tests" --test-threads=1 --show-output >> "$out/kernel-tests.txt" 2>&1
rc=$((rc | $?))
tail -30 "$out/kernel-tests.txt"
note kernel_tests "$(test_results "$out/kernel-tests.txt" "$rc")"
# The attention tests again with bf16/f16 attention off the tensor cores
# (QWEN_SERVE_CUDA_MMA_ATTENTION=0: the f32-arithmetic kernel, which f32 always takes),
# appended to the same file (a call brings back at most 8).
QWEN_SERVE_CUDA_MMA_ATTENTION=0 timeout 45 "$work/kernel-gpu-tests" --test-threads=1 attention > "$work/kernel-tests-mma-off.txt" 2>&1
mma_rc=$?
{ echo "=== QWEN_SERVE_CUDA_MMA_ATTENTION=0"; cat "$work/kernel-tests-mma-off.txt"; } >> "$out/kernel-tests.txt"
note kernel_tests_mma_attention_off "$(test_results "$work/kernel-tests-mma-off.txt" "$mma_rc")"
tail -3 "$work/kernel-tests-mma-off.txt"
# The fused q/k/v kernel is on by default; if its test did not pass, the model steps run
# without it (the separate ops, which the other tests cover) and the summary says so.
if ! grep -q '^test qkv_step_matches_the_separate_ops \.\.\. ok' "$out/kernel-tests.txt"; then
  export QWEN_SERVE_CUDA_FUSED_QKV=0
  note fused_qkv '"off for the model steps: its kernel test did not pass"'
fi
fi

# 3. Model-level comparison with transformers, and throughput.
device_flag="${GPU_CHECK_DEVICE_FLAG:---device cuda}"
if "$work/qwen-serve" serve --help 2>/dev/null | grep -q -- '--device'; then
  for spec in "0.5b ${GPU_CHECK_DTYPES_05B:-f32,bf16} ${GPU_CHECK_LIMIT_05B:-190} 70 ${GPU_CHECK_HF_05B:-${GPU_CHECK_HF:-}}" \
            "7b ${GPU_CHECK_DTYPES_7B:-bf16} ${GPU_CHECK_LIMIT_7B:-285} 100 ${GPU_CHECK_HF_7B:-${GPU_CHECK_HF:-}}"; do
    set -- $spec
    want "$1" || continue
    PYTHONUNBUFFERED=1 timeout "$3" python3 scripts/gpu_reference.py --config "$1" --dtypes "$2" --qwen-serve "$work/qwen-serve" \
      --tokenizer-dir "$carry" --out "$out" --work "$work" --device-flag="$device_flag" --bench-timeout "$4" \
      ${5:+--hf-concurrency "$5"} ${GPU_CHECK_LEVELS:+--bench-concurrency "$GPU_CHECK_LEVELS"} ${GPU_CHECK_VARIANTS:+--variants "$GPU_CHECK_VARIANTS"} \
      > "$out/model-$1.log" 2>&1
    note "model_$1_exit_code" "$?"
    # The 0.5B's folder stays for the profile step when it runs.
    [ "$1" = 0.5b ] && ! want profile && rm -rf "$work/qwen2.5-$1-random"
  done
else
  note model_checks '"skipped: qwen-serve serve --help shows no --device flag; the binary cannot be put on the GPU"'
fi

# 4. Optional, not in the default steps: where a decode step's GPU time goes, per kernel.
#    Nsight Compute with one metric and the clocks left alone, over 600 launches after skipping
#    prefill and warm-up. GPU_CHECK_PROFILE lists the runs as config:streams:skip[:VAR=VALUE]
#    (default "0.5b:1:3000 7b:1:6000 7b:256:9000"); every summary goes into $out/ncu.txt (a call
#    brings back at most 8 files), which scripts/ncu_summary.py turns into per-kernel tables.
if want profile; then
  ncu_bin=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  for spec in ${GPU_CHECK_PROFILE:-0.5b:1:3000 7b:1:6000 7b:256:9000}; do
    IFS=: read -r config streams skip setting <<< "$spec"
    if [ -z "$ncu_bin" ]; then note profile '"skipped: no ncu"'; break; fi
    folder="$work/qwen2.5-$config-random"
    [ -d "$folder" ] || PYTHONUNBUFFERED=1 timeout 90 python3 scripts/gpu_reference.py --config "$config" --make-only \
      --qwen-serve "$work/qwen-serve" --tokenizer-dir "$carry" --out "$out" --work "$work" >> "$out/ncu.txt" 2>&1
    echo "=== $spec" >> "$out/ncu.txt"
    start=$(date +%s)
    env ${setting:+"$setting"} timeout 120 "$ncu_bin" --clock-control none --metrics gpu__time_duration.sum \
      --print-summary per-kernel --launch-skip "$skip" --launch-count 600 \
      "$work/qwen-serve" bench --model "$folder" --dtype bf16 $device_flag --concurrency "$streams" --waves 1 \
      --prompt-len 256 --output-len 64 >> "$out/ncu.txt" 2>&1
    note "profile_${config}_${streams}${setting:+_${setting%%=*}}" "{\"exit_code\": $?, \"seconds\": $(( $(date +%s) - start ))}"
  done
fi
rm -rf "$work/qwen2.5-0.5b-random"
rm -rf "$work/qwen2.5-7b-random"
cat "$summary"
# The speed tables and the logit comparisons, last, where the device tool's reply shows them.
for f in "$out"/model-*.json; do
  [ -e "$f" ] || continue
  python3 - "$f" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
for k, v in r.items():
    if k.startswith("compare_"):
        print(r["config"], k, {x: v[x] for x in v if not x.endswith("_tokens") and x != "server_top2"})
    if k.endswith("_seconds"):
        print(r["config"], k, round(v, 1))
b = r.get("qwen_serve_bench", {})
if b.get("error"):
    print(r["config"], "qwen-serve bench error:", b["error"], r.get("qwen_serve_bench_log", "")[-1500:])
# The A/B variants: output tok/s, TPOT p50 and the step split per level, then phases and logs.
for k, v in r.items():
    if not k.startswith("qwen_serve_bench_") or not isinstance(v, dict):
        continue
    name = k[len("qwen_serve_bench_"):]
    if v.get("error"):
        print(r["config"], name, "error:", str(v["error"])[-400:])
    for rep in v.get("reports", []):
        t = rep.get("step_times") or {}
        print(r["config"], name, rep["concurrency"], round(rep["output_tok_per_s"]), "tok/s, TPOT",
              round(rep["tpot_ms"]["p50"], 2), "ms, step", round(t.get("forward_ms", 0), 2), "+",
              round(t.get("logits_ms", 0), 2), "+", round(t.get("other_ms", 0), 2))
        if t.get("phases"):
            print("   phases:", ", ".join(f"{p['phase']} {p['ms']:.2f}" for p in t["phases"]))
    for line in v.get("log_lines", [])[-3:]:
        print("  ", line[-160:])
EOF
  grep -h -A5 ": concurrency |" "${f%.json}.log" 2>/dev/null | tail -6 | sed "s|^|$(basename "$f"): |"
done
# Where the profiled steps' GPU time went, per kernel (the largest first).
# (An if, not &&: the script's exit status is the last command's, and no profile is no failure.)
if [ -e "$out/ncu.txt" ]; then
  python3 scripts/ncu_summary.py "$out/ncu.txt" | awk '/^###/ {n = 0} {if (n++ < 10) print}'
fi

