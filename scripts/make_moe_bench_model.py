#!/usr/bin/env python3
"""A random-weight Qwen3-MoE checkpoint with the real model's structure at a size this machine
can run, and its GGUF made by llama.cpp's own converter: for benchmarking MoE against
llama-server on the same file (no real MoE weights can be fetched here) and for loading a GGUF
whose layout llama.cpp, not this project, decided.

    ~/.cache/qwen-serve/torch-venv/bin/python scripts/make_moe_bench_model.py OUT_DIR \\
        [--convert PATH/TO/convert_hf_to_gguf.py] [--outtype q8_0]

Writes OUT_DIR/hf (config.json, bf16 model.safetensors, the Qwen3 tokenizer files from
scripts/fetch-test-data.sh's cache) and OUT_DIR/qwen3-moe-bench-<outtype>.gguf (with
--arch qwen2_moe: OUT_DIR/hf-qwen2-moe and qwen2-moe-bench-<outtype>.gguf). The shape:
Qwen3-30B-A3B's head layout (32 query heads of 128 over 4 KV heads -> here 16 over 4), its
routing (8 of 128 experts, renormalised -> here 8 of 64), its vocabulary and untied head; 8
layers of width 1024 with 256-wide experts: ~0.76B parameters, ~0.25B active per token.
Weights are N(0, 0.08) (the text is noise; the arithmetic is what a real model's is).
Deterministic (seed 0).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--convert", type=Path, help="llama.cpp's convert_hf_to_gguf.py (default: the llama-cpp-python source cached by scripts/build-llama-server.sh)")
    ap.add_argument("--outtype", default="q8_0")
    ap.add_argument("--arch", choices=["qwen3_moe", "qwen2_moe"], default="qwen3_moe",
                    help="qwen2_moe: Qwen2-MoE's features instead (q/k/v biases, a gated shared expert, no renormalising)")
    args = ap.parse_args()
    hf = args.out / ("hf" if args.arch == "qwen3_moe" else "hf-qwen2-moe")
    hf.mkdir(parents=True, exist_ok=True)

    common = dict(
        vocab_size=151936,
        hidden_size=1024,
        intermediate_size=3072,
        moe_intermediate_size=256,
        num_experts=64,
        num_experts_per_tok=8,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=4,
        max_position_embeddings=40960,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=151643,
        eos_token_id=151645,
        # Larger than transformers' 0.02, so routing and experts move the logits well beyond
        # Q8_0's rounding and a check against transformers can tell a wrong MoE from a right one.
        initializer_range=0.08,
    )
    if args.arch == "qwen3_moe":
        model_class, cfg = Qwen3MoeForCausalLM, Qwen3MoeConfig(head_dim=128, norm_topk_prob=True, **common)
    else:
        # Qwen2-MoE derives the head size from the width (1024 / 16 = 64).
        model_class, cfg = Qwen2MoeForCausalLM, Qwen2MoeConfig(shared_expert_intermediate_size=1024, norm_topk_prob=False, **common)
    torch.manual_seed(0)
    model = model_class(cfg).to(torch.bfloat16).eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"{params / 1e9:.2f}B parameters")
    model.save_pretrained(str(hf), safe_serialization=True)
    data = subprocess.run(["bash", str(REPO / "scripts/fetch-test-data.sh")], check=True, capture_output=True, text=True).stdout.strip()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(data) / "qwen3-tokenizer" / f, hf / f)
    # The Hub's spelling of the rope base and of the expert count, as real config.json files have them.
    c = json.loads((hf / "config.json").read_text())
    c.setdefault("rope_theta", 1000000.0)
    if "num_local_experts" in c:
        c["num_experts"] = c.pop("num_local_experts")
    (hf / "config.json").write_text(json.dumps(c, indent=2, sort_keys=True) + "\n")

    convert = args.convert or next(Path.home().glob(".cache/qwen-serve/llama.cpp/llama-cpp-python-*/vendor/llama.cpp/convert_hf_to_gguf.py"), None)
    if convert is None:
        sys.exit("no convert_hf_to_gguf.py: pass --convert")
    out = args.out / f"{args.arch.replace('_', '-')}-bench-{args.outtype}.gguf"
    subprocess.run([sys.executable, str(convert), str(hf), "--outfile", str(out), "--outtype", args.outtype], check=True)
    print(out)


if __name__ == "__main__":
    main()
