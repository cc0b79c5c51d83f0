#!/usr/bin/env python3
"""Run by scripts/gpu-check.sh on the GPU machine (a dry run on a CPU: `--torch-device cpu
--device-flag="--device cpu"` against the CPU binary). Model-level check for one real Qwen config with
random weights: transformers is the reference.

  python3 scripts/gpu_reference.py --config 0.5b --qwen-serve BIN --tokenizer-dir DIR --out DIR

1. Builds Qwen2ForCausalLM from the real config (Qwen2.5-0.5B-Instruct or -7B-Instruct) on the
   GPU with random weights (biases and norm weights perturbed too, so loading them matters) and
   saves it with its tokenizer as a model folder.
2. For each dtype: starts `qwen-serve serve` on the folder and asks /v1/completions for the
   prompt's token logprobs (echo) and a greedy continuation; compares both with transformers on
   the same weights.
3. Throughput: `qwen-serve bench` against `model.generate` at the same prompt/output lengths.

Writes <out>/model-<config>.json as it goes, so a run cut short still leaves what it measured.
Needs python3 with torch, transformers and safetensors; no network.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request

import torch
import transformers

CONFIGS = {
    # Qwen/Qwen2.5-0.5B-Instruct and Qwen/Qwen2.5-7B-Instruct config.json (architecture fields).
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_hidden_layers=24,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_window_layers=21,
                 sliding_window=32768),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_hidden_layers=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False, max_window_layers=28,
               sliding_window=131072),
}
COMMON = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_act="silu", bos_token_id=151643,
              eos_token_id=151645, max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
              use_sliding_window=False, attention_dropout=0.0, initializer_range=0.02, use_cache=True)
TORCH_DTYPE = {"f32": torch.float32, "bf16": torch.bfloat16}
PROMPT_LEN, GEN_LEN, PORT = 96, 16, 18123


def make_model(name, folder, tokenizer_dir, device):
    config = transformers.Qwen2Config(**COMMON, **CONFIGS[name])
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.Qwen2ForCausalLM(config).to(torch.bfloat16).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.02)
            elif "norm" in pname:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tokenizer_dir, f), folder)
    return model


def http(url, body=None, timeout=600):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def start_server(binary, folder, dtype, device_flag, env=None):
    cmd = [binary, "serve", "--model", folder, "--dtype", dtype, "--port", str(PORT), *device_flag]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(f"{folder}-{dtype}-serve.log", "w"),
                            env={**os.environ, **(env or {})})
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {open(f'{folder}-{dtype}-serve.log').read()[-2000:]}")
        try:
            http(f"http://127.0.0.1:{PORT}/health", timeout=2)
            return proc
        except Exception:
            time.sleep(1)
    proc.kill()
    raise RuntimeError("server did not become healthy in 120 s")


def prompt_ids():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 151643, (PROMPT_LEN,), generator=g).tolist()


def prompt_logprobs(m, ids, device):
    """Each prompt token's logprob given the tokens before it."""
    with torch.no_grad():
        lp = torch.log_softmax(m(torch.tensor([ids], device=device)).logits[0].float(), -1)
    return [lp[i - 1, ids[i]].item() for i in range(1, len(ids))]


def diffs(a, b):
    d = [abs(x - y) for x, y in zip(a, b)]
    return {"max_abs": max(d), "mean_abs": sum(d) / len(d)}


def compare(model, tokenizer, dtype, binary, folder, device_flag, device, f32_prompt, env=None):
    """Prompt-token logprobs and a greedy continuation, server vs transformers. With
    `f32_prompt` (transformers in f32 on the same weights), both sides' distance from it too:
    how far our bf16 is from exact next to how far transformers' own bf16 is."""
    ids = prompt_ids()
    m = model.to(TORCH_DTYPE[dtype])
    ref_prompt = prompt_logprobs(m, ids, device)
    with torch.no_grad():
        x = torch.tensor([ids], device=device)
        gen = m.generate(x, max_new_tokens=GEN_LEN, do_sample=False, min_new_tokens=GEN_LEN)[0, len(ids):].tolist()
    ref_tokens = [tokenizer.decode([t]) for t in gen]
    ref_text = tokenizer.decode(ids + gen)
    proc = start_server(binary, folder, dtype, device_flag, env)
    try:
        name = http(f"http://127.0.0.1:{PORT}/v1/models")["data"][0]["id"]
        r = http(f"http://127.0.0.1:{PORT}/v1/completions", {
            "model": name, "prompt": ids, "max_tokens": GEN_LEN, "temperature": 0, "echo": True, "logprobs": 2})
        # The same continuation with its tokens named by id, to teacher-force transformers on it.
        r_ids = http(f"http://127.0.0.1:{PORT}/v1/completions", {
            "model": name, "prompt": ids, "max_tokens": GEN_LEN, "temperature": 0, "logprobs": 0,
            "return_tokens_as_token_ids": True})
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    lps = r["choices"][0]["logprobs"]
    got_prompt = lps["token_logprobs"][1:len(ids)]
    got_tokens = lps["tokens"][len(ids):]
    d = [abs(a - b) for a, b in zip(got_prompt, ref_prompt)]
    agree = 0
    for a, b in zip(got_tokens, ref_tokens):
        if a != b:
            break
        agree += 1
    vs_f32 = {} if f32_prompt is None else {
        "qwen_serve_vs_transformers_f32": diffs(got_prompt, f32_prompt),
        "transformers_vs_transformers_f32": diffs(ref_prompt, f32_prompt),
    }
    # Decode steps (the prompt's numbers above come from one prefill): each generated token's
    # logprob as the server's decode step gave it, against transformers given the same tokens
    # (in this dtype; and in f32 where that reference is at hand, beside transformers' own).
    lp_ids = r_ids["choices"][0]["logprobs"]
    gen_ids = [int(t.split(":", 1)[1]) for t in lp_ids["tokens"]]
    decode = {}
    if gen_ids and None not in lp_ids["token_logprobs"]:
        full = ids + gen_ids
        ref_dec = prompt_logprobs(m, full, device)[len(ids) - 1:]
        decode["decode_logprob_vs_transformers"] = diffs(lp_ids["token_logprobs"], ref_dec)
        if f32_prompt is not None:
            f32_dec = prompt_logprobs(model.to(torch.float32), full, device)[len(ids) - 1:]
            model.to(TORCH_DTYPE[dtype])
            decode["decode_logprob_vs_transformers_f32"] = diffs(lp_ids["token_logprobs"], f32_dec)
            decode["transformers_teacher_forced_vs_f32"] = diffs(ref_dec, f32_dec)
    return {
        **vs_f32,
        **decode,
        "prompt_logprob_max_abs_diff": max(d), "prompt_logprob_mean_abs_diff": sum(d) / len(d),
        "prompt_logprob_spread": max(ref_prompt) - min(ref_prompt),
        "greedy_tokens_agreeing": agree, "greedy_tokens": GEN_LEN,
        # Token strings may be rendered differently; the echoed text is the robust comparison.
        "greedy_text_equal": r["choices"][0]["text"] == ref_text,
        "server_tokens": got_tokens, "transformers_tokens": ref_tokens,
        # The two likeliest tokens at each generated position: how close a tie was where two
        # runs part ways.
        "server_top2": (lps.get("top_logprobs") or [])[len(ids):],
    }


def hf_throughput(model, batch, prompt_len, output_len, device):
    m = model.to(torch.bfloat16)
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 151643, (batch, prompt_len), generator=g).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.no_grad():
        m.generate(x[:, :8], attention_mask=torch.ones_like(x[:, :8]), max_new_tokens=4, do_sample=False)  # warm-up
        sync()
        t = time.time()
        m.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=output_len, min_new_tokens=output_len, do_sample=False)
        sync()
    secs = time.time() - t
    return {"batch": batch, "seconds": secs, "output_tokens_per_s": batch * output_len / secs}


def table(result):
    """The speed side by side: output tok/s by concurrency, and the single stream's decode rate."""
    ours = {r["concurrency"]: r for r in result.get("qwen_serve_bench", {}).get("reports", [])}
    lines = [f"{result['config']}: concurrency | qwen-serve out tok/s (TPOT p50 ms; step: forward issued + "
             "waiting for logits + rest ms) | transformers out tok/s | ratio"]
    for c in sorted(set(ours) | {h["batch"] for h in result.get("transformers_bench", [])}):
        r, h = ours.get(c), next((h for h in result.get("transformers_bench", []) if h["batch"] == c), None)
        q = "-"
        if r:
            t = r.get("step_times") or {}
            q = f"{r['output_tok_per_s']:.0f} ({r['tpot_ms']['p50']:.2f}; " \
                f"{t.get('forward_ms', 0):.2f} + {t.get('logits_ms', 0):.2f} + {t.get('other_ms', 0):.2f})"
        hf = f"{h['output_tokens_per_s']:.0f}" if h else "-"
        ratio = f"{r['output_tok_per_s'] / h['output_tokens_per_s']:.2f}" if r and h else "-"
        lines.append(f"  {c} | {q} | {hf} | {ratio}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", choices=CONFIGS, required=True)
    ap.add_argument("--qwen-serve", required=True)
    ap.add_argument("--tokenizer-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/qwen-gpu-check")
    ap.add_argument("--dtypes", default="f32,bf16", help="dtypes to compare with transformers ('none')")
    ap.add_argument("--device-flag", default="--device cuda", help="how the binary is told to use the GPU")
    ap.add_argument("--torch-device", default="cuda", help="cpu: a dry run of this script's plumbing")
    ap.add_argument("--bench-concurrency", default="1,16,64,256")
    ap.add_argument("--hf-concurrency", default=None, help="levels for transformers' generate (default: the bench's; 'none')")
    ap.add_argument("--variants", default=None, help="A/B runs to make, by name (default: all; 'none')")
    ap.add_argument("--bench-len", type=int, default=256, help="prompt and output tokens")
    ap.add_argument("--bench-timeout", type=int, default=300, help="seconds for qwen-serve's whole bench")
    ap.add_argument("--make-only", action="store_true", help="only write the checkpoint folder")
    args = ap.parse_args()
    folder = os.path.join(args.work, f"qwen2.5-{args.config}-random")
    result = {"config": args.config, "transformers": transformers.__version__, "torch": torch.__version__}
    path = os.path.join(args.out, f"model-{args.config}.json")

    def save():
        with open(path, "w") as f:
            json.dump(result, f, indent=1)

    t = time.time()
    model = make_model(args.config, folder, args.tokenizer_dir, args.torch_device)
    if args.make_only:
        return
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    result["make_seconds"] = time.time() - t
    save()
    device_flag = args.device_flag.split()
    dtypes = [] if args.dtypes == "none" else args.dtypes.split(",")
    f32_prompt = None
    if any(d != "f32" for d in dtypes):
        f32_prompt = prompt_logprobs(model.to(torch.float32), prompt_ids(), args.torch_device)
    for dtype in dtypes:
        # Eager, then with decode steps as CUDA graphs: the graphs must give the eager run's
        # greedy tokens exactly (same kernels on the same inputs, attention split alike).
        # (Graphs only in bf16, the dtype served on a GPU by default: each comparison costs a server start.)
        runs = [(f"compare_{dtype}", {"QWEN_SERVE_CUDA_GRAPHS": "0"})]
        if dtype == "bf16":
            runs.append((f"compare_{dtype}_graphs", {"QWEN_SERVE_CUDA_GRAPHS": "8"}))
            # Attention with f32 arithmetic instead of the tensor cores against transformers too,
            # when its variant runs.
            if args.variants is None or "mma_attention_off" in args.variants.split(","):
                runs.append((f"compare_{dtype}_mma_off", {"QWEN_SERVE_CUDA_GRAPHS": "8", "QWEN_SERVE_CUDA_MMA_ATTENTION": "0"}))
            # Without the fused decode path (its greedy tokens are decode steps of one row).
            if args.variants is None or "fused_decode_off" in args.variants.split(","):
                runs.append((f"compare_{dtype}_fused_off", {"QWEN_SERVE_CUDA_GRAPHS": "8", "QWEN_SERVE_CUDA_FUSED_DECODE": "0"}))
        for key, env in runs:
            try:
                result[key] = compare(model, tokenizer, dtype, args.qwen_serve, folder, device_flag,
                                      args.torch_device, f32_prompt, env)
            except Exception as e:  # keep going: the next measurement may still work
                result[key] = {"error": repr(e)}
            save()
        eager, graphs = result[f"compare_{dtype}"], result.get(f"compare_{dtype}_graphs", {})
        if "server_tokens" in eager and "server_tokens" in graphs:
            graphs["same_tokens_as_eager"] = graphs["server_tokens"] == eager["server_tokens"]
            apart = [i for i, (a, b) in enumerate(zip(eager["server_tokens"], graphs["server_tokens"])) if a != b]
            if apart and len(eager.get("server_top2", [])) > apart[0]:
                # Where they part: each run's two likeliest tokens (a near-tie flips on rounding).
                graphs["first_difference"] = {"index": apart[0], "eager_top2": eager["server_top2"][apart[0]],
                                              "graphs_top2": graphs["server_top2"][apart[0]]}
            save()
    bench_json = os.path.join(args.work, f"bench-{args.config}.json")
    n = str(args.bench_len)
    # One wave per level: every request starts together, as in a batched generate.
    cmd = [args.qwen_serve, "bench", "--model", folder, "--dtype", "bf16", *device_flag, "--concurrency",
           args.bench_concurrency, "--waves", "1", "--prompt-len", n, "--output-len", n, "--json", bench_json]
    t = time.time()
    if os.path.exists(bench_json):
        os.remove(bench_json)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.bench_timeout)
        error, log = (None if p.returncode == 0 else f"exit code {p.returncode}"), p.stderr
    except subprocess.TimeoutExpired as e:
        error, log = f"timed out after {args.bench_timeout} s", str(e.stderr)
    # The bench rewrites its JSON after every level: a failed or cut-short run keeps those.
    result["qwen_serve_bench"] = json.load(open(bench_json)) if os.path.exists(bench_json) else {}
    result["qwen_serve_bench"]["error"] = error
    result["qwen_serve_bench_log"] = log[-3000:]
    result["qwen_serve_bench_seconds"] = time.time() - t
    save()
    # transformers' batched generate on the same weights, before the A/B runs below so that a
    # step cut short by its time limit loses those first.
    result["transformers_bench"] = []
    hf_levels = (args.hf_concurrency or args.bench_concurrency).split(",")
    for b in [] if hf_levels == ["none"] else hf_levels:
        result["transformers_bench"].append(hf_throughput(model, int(b), args.bench_len, args.bench_len, args.torch_device))
        save()
    print(table(result), flush=True)
    # A/B runs, each against the defaults above: decode steps without CUDA graphs
    # (QWEN_SERVE_CUDA_GRAPHS=0, models/src/cuda_graphs.rs; graphs of up to 64 sequences by
    # default) at every level, and with graphs up to 256 at 256. At 1 and 16 streams our few-rows matmul
    # (QWEN_SERVE_CUDA_SMALL_MATMUL=1, kernels/src/small_matmul.rs; off by default: slower than
    # cuBLAS on an H200). At 1 and 64 streams: each phase of the forward timed with a wait for the GPU
    # after it (QWEN_SERVE_PHASE_TIMES, models/src/phase_times.rs; also at 256), and defaults
    # switched off: the fused q/k/v kernel (kernels/src/qkv.rs), the device
    # set-up of src/device/cuda.rs (QWEN_SERVE_CUDA_TUNING); candle's upload cache on
    # (QWEN_SERVE_CUDA_PARAM_CACHE, kernels/src/param_cache.rs); attention's older 256-key splits, and
    # two chunks of keys per split; and each replayed step timed (graph_times).
    levels = args.bench_concurrency.split(",")
    ab = [c for c in ("1", "64") if c in levels]
    # Most telling first: a step's time limit cuts the list from the end.
    variants = [# Sampled instead of greedy (EOS still ignored), where greedy steps bring back one id
                # a row: Qwen's recommended settings, each row's best candidates to the host
                # (kernels/cuda/top_k.cu); top-p alone, each row whole in bf16; temperature alone,
                # drawn on the GPU (kernels/cuda/sample.cu). What chat traffic costs beside the table's.
                ("sampled", {}, levels, {"--temperature": "0.7", "--top-p": "0.8", "--top-k": "20"}),
                ("sampled_top_p", {}, levels, {"--temperature": "0.7", "--top-p": "0.8"}),
                ("sampled_temperature", {}, levels, {"--temperature": "0.7"}),
                # The first and last of those with every row copied whole to the host sampler
                # (QWEN_SERVE_SAMPLE_ON_DEVICE=0), as before 2026-11-28.
                ("sampled_on_host", {"QWEN_SERVE_SAMPLE_ON_DEVICE": "0"}, levels, {"--temperature": "0.7", "--top-p": "0.8", "--top-k": "20"}),
                ("sampled_temperature_on_host", {"QWEN_SERVE_SAMPLE_ON_DEVICE": "0"}, levels, {"--temperature": "0.7"}),
                # Decode steps of one or two sequences without the few-rows kernels that fuse norms, q/k/v,
                # SiLU and residual adds in (kernels/src/small_matmul.rs, qkv/matmul.rs; five launches
                # a layer instead of ten; on by default since 2026-11-27).
                ("fused_decode_off", {"QWEN_SERVE_CUDA_FUSED_DECODE": "0"}, [c for c in ("1",) if c in levels]),
                # Attention with f32 arithmetic instead of the tensor cores
                # (kernels/cuda/paged_attention_mma.cu, the default since 2026-11-27), at every level.
                ("mma_attention_off", {"QWEN_SERVE_CUDA_MMA_ATTENTION": "0"}, levels),
                # Host and GPU time of each replayed step (models/src/cuda_graphs.rs), in the log lines.
                ("graph_times", {"QWEN_SERVE_CUDA_GRAPH_TIMES": "1", "RUST_LOG": "info"}, ab),
                ("small_matmul", {"QWEN_SERVE_CUDA_SMALL_MATMUL": "1"}, [c for c in ("1", "16") if c in levels]),
                # Our few-rows matmul for weights of 64 MiB and more only (a 7B's gate/up and down).
                ("small_matmul_large", {"QWEN_SERVE_CUDA_SMALL_MATMUL": "large"}, [c for c in ("1", "16") if c in levels]),
                ("graphs_off", {"QWEN_SERVE_CUDA_GRAPHS": "0"}, levels),
                ("phase_times", {"QWEN_SERVE_PHASE_TIMES": "1"}, [c for c in ("1", "64", "256") if c in levels]),
                ("graphs_256", {"QWEN_SERVE_CUDA_GRAPHS": "256"}, [c for c in ("256",) if c in levels]),
                # 200 streams: eager by default, and on the 256-row graph with 56 padding rows
                # (models/src/cuda_graphs.rs, pad_decode_batch).
                ("eager_200", {}, ["200"]),
                ("graphs_256_padded_200", {"QWEN_SERVE_CUDA_GRAPHS": "256"}, ["200"]),
                # Attention's splits at least 256 keys, as before 2026-11-27 (now 32).
                ("split_256", {"QWEN_SERVE_CUDA_ATTENTION_SPLIT_KEYS": "256"}, ab),
                # Two chunks of keys per split (the default is one, since 2026-11-27): longer
                # per-block latency for a few sequences, fewer partials to merge.
                ("split_64", {"QWEN_SERVE_CUDA_ATTENTION_SPLIT_KEYS": "64"}, ab),
                ("fused_qkv_off", {"QWEN_SERVE_CUDA_FUSED_QKV": "0"}, ab),
                ("tuning_off", {"QWEN_SERVE_CUDA_TUNING": "off"}, ab),
                ("param_cache", {"QWEN_SERVE_CUDA_PARAM_CACHE": "1"}, ab),
                # One stream decoding past 4,096 keys, with splits capped at 64 (the default) and
                # not (up to 256 here): how long contexts take the last-split merge.
                ("long_context", {}, ["1"], {"--prompt-len": "4096", "--output-len": "128"}),
                ("long_context_256_splits", {"QWEN_SERVE_CUDA_ATTENTION_MAX_SPLITS": "256"}, ["1"],
                 {"--prompt-len": "4096", "--output-len": "128"})]
    wanted = None if args.variants is None else set(args.variants.split(","))
    for name, env, at, *flags in variants:
        if not at or (wanted is not None and name not in wanted):
            continue
        key = f"qwen_serve_bench_{name}"
        ab_json = os.path.join(args.work, f"bench-{args.config}-{name}.json")
        cmd_ab = [x if x != args.bench_concurrency else ",".join(at) for x in cmd]
        cmd_ab[cmd_ab.index("--json") + 1] = ab_json
        for flag, value in (flags[0] if flags else {}).items():
            if flag in cmd_ab:
                cmd_ab[cmd_ab.index(flag) + 1] = value
            else:
                cmd_ab += [flag, value]
        try:
            p = subprocess.run(cmd_ab, capture_output=True, text=True, timeout=args.bench_timeout,
                               env={**os.environ, **env})
            result[key] = json.load(open(ab_json)) if p.returncode == 0 else {"error": p.stderr[-3000:]}
            # Whether graphs were captured (or failed), and the device set-up line.
            result[key]["log_lines"] = [l for l in p.stderr.splitlines() if "CUDA graph" in l or "device: cuda" in l or "fused decode" in l][-12:]
        except subprocess.TimeoutExpired:
            result[key] = {"error": f"timed out after {args.bench_timeout} s"}
        save()
        for r in result[key].get("reports", []):
            t = r.get("step_times") or {}
            print(f"  {name} {env}: {r['concurrency']} | {r['output_tok_per_s']:.0f} "
                  f"({r['tpot_ms']['p50']:.2f}; {t.get('forward_ms', 0):.2f} + {t.get('logits_ms', 0):.2f} + "
                  f"{t.get('other_ms', 0):.2f})", flush=True)
            if t.get("phases"):
                print("    phases (ms/step): " + ", ".join(f"{p['phase']} {p['ms']:.2f}" for p in t["phases"]), flush=True)
        if "error" in result[key]:
            print(f"  {name} {env}: {result[key]['error'][-500:]}", flush=True)
        for line in result[key].get("log_lines", [])[-4:]:
            print(f"    {line[-200:]}", flush=True)

    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
