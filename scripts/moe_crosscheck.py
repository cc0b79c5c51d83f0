#!/usr/bin/env python3
"""Teacher-forced log-probs of a running qwen-serve against transformers on a model folder:
for the MoE bench model (scripts/make_moe_bench_model.py), served from its folder or from the
GGUFs llama.cpp's converter made of it.

    ~/.cache/qwen-serve/torch-venv/bin/python scripts/moe_crosscheck.py HF_FOLDER [--url URL]

Prints the largest and mean |log-prob difference| over a 44-token prompt, and the same for
transformers with `norm_topk_prob` flipped and with one routed expert fewer, to show how
far a wrong MoE would land.
"""

import argparse
import json
import os
import urllib.request

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

IDS = [785, 3974, 13876, 38835, 34208, 916, 279, 15678, 5562, 13, 576, 1156, 315, 279, 1879, 374, 264, 1602, 1661, 1899, 11, 323] * 2


def served(url: str) -> list[float]:
    body = {"prompt": IDS, "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 1}
    req = urllib.request.Request(f"{url}/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))["choices"][0]["logprobs"]["token_logprobs"][1 : len(IDS)]


def reference(folder: str, **override) -> list[float]:
    cfg = AutoConfig.from_pretrained(folder)
    for k, v in override.items():
        setattr(cfg, k, v)
    model = AutoModelForCausalLM.from_pretrained(folder, config=cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([IDS])).logits[0].float(), -1)
    return [float(lp[i, IDS[i + 1]]) for i in range(len(IDS) - 1)]


def diff(a: list[float], b: list[float]) -> str:
    d = [abs(x - y) for x, y in zip(a, b)]
    return f"max {max(d):.2e}, mean {sum(d) / len(d):.2e}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    args = ap.parse_args()
    ref = reference(args.folder)
    print(f"qwen-serve vs transformers: {diff(served(args.url), ref)}")
    cfg = AutoConfig.from_pretrained(args.folder)
    for override in ({"norm_topk_prob": not cfg.norm_topk_prob}, {"num_experts_per_tok": cfg.num_experts_per_tok - 1}):
        print(f"transformers with {override} vs as configured: {diff(reference(args.folder, **override), ref)}")


if __name__ == "__main__":
    main()
