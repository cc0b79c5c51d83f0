#!/usr/bin/env python3
"""Single-stream decode speed of an OpenAI-compatible server, with the lightest client we can.

    python3 scripts/decode_probe.py URL [--tokens 128] [--repeats 5]

`scripts/peer-bench.sh` streams every token to a client that parses it on the same two cores,
which costs a server whose threads spin-wait (llama-server's OpenMP pool) more than one whose
threads sleep. This probe asks for non-streamed completions instead, so the client is idle
while the server works: the decode rate is `tokens / (t(1 + tokens) - t(1))` over the median
wall times of `max_tokens = 1 + tokens` and `max_tokens = 1` requests on the same prompt
(`ignore_eos`, greedy), which cancels the prompt's prefill and the HTTP round trip.
Prints one JSON line.
"""

import argparse
import json
import statistics
import time
import urllib.request

PROMPT = "Write a long story about a lighthouse keeper and a ship in a storm. " * 8


def completion(url: str, max_tokens: int) -> float:
    body = json.dumps(
        {
            "prompt": PROMPT,
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
            # llama-server: do not reuse the previous request's KV (qwen-serve's prefix cache
            # would, so both prefill the prompt's last block at most; the difference cancels).
            "cache_prompt": False,
        }
    ).encode()
    request = urllib.request.Request(
        url.rstrip("/") + "/v1/completions", body, {"Content-Type": "application/json"}
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        answer = json.load(response)
    elapsed = time.perf_counter() - start
    got = answer["usage"]["completion_tokens"]
    if got != max_tokens:
        raise SystemExit(f"asked for {max_tokens} tokens, got {got}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    completion(args.url, 1 + args.tokens)  # warm-up
    short = [completion(args.url, 1) for _ in range(args.repeats)]
    long = [completion(args.url, 1 + args.tokens) for _ in range(args.repeats)]
    decode_s = statistics.median(long) - statistics.median(short)
    print(
        json.dumps(
            {
                "url": args.url,
                "tokens": args.tokens,
                "short_s": short,
                "long_s": long,
                "decode_tok_per_s": args.tokens / decode_s,
            }
        )
    )


if __name__ == "__main__":
    main()
