#!/usr/bin/env python3
"""Embedding throughput of one OpenAI-compatible server (`/v1/embeddings`), standard library only.

    python3 scripts/embed_bench.py URL [--json OUT] [--vectors OUT]

Every input is distinct token ids (seeded, from the ordinary-text id range 1000..50000), so no
prefix or prompt cache can serve a later input from an earlier one, and every server sees the
same ids. Measures: one 128-token input at a time (median latency of 10 after a warm-up); one
request of 64 such inputs (median of 3); 16 clients each sending single 128-token inputs (64
requests). `--vectors` writes the embeddings of 8 fixed inputs, for scripts/embed-bench.sh to
compare servers. Called by scripts/embed-bench.sh, which starts each server in turn.

`--rerank` measures `/v1/rerank` instead: one query against 32 documents of 80 words (median
of 3 requests, each with a new query), for a server that reranks with the model it serves.
"""
import argparse
import json
import random
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

LEN = 128


def ids(seed: int, n: int = LEN) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1000, 50000) for _ in range(n)]


def post_to(url: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def post(url: str, body: dict) -> dict:
    return post_to(url, "/v1/embeddings", body)


def embed(url: str, inputs: list[list[int]]) -> list[list[float]]:
    reply = post(url, {"input": inputs, "encoding_format": "float"})
    data = sorted(reply["data"], key=lambda d: d["index"])
    assert len(data) == len(inputs), reply
    return [d["embedding"] for d in data]


def rerank(url: str) -> dict:
    words = "the of and to in is for on with as by at from that this it be are was an or which code data model python list function value server request".split()
    rng = random.Random(0)
    times = []
    for trial in range(3):
        documents = [" ".join(rng.choice(words) for _ in range(80)) for _ in range(32)]
        t = time.perf_counter()
        reply = post_to(url, "/v1/rerank", {"query": f"How does request {trial} get handled by the server?", "documents": documents})
        times.append(time.perf_counter() - t)
        assert len(reply["results"]) == 32, reply
    tokens = reply["usage"]["total_tokens"]
    return {"documents": 32, "prompt_tokens_per_request": tokens, "rerank32_s_p50": statistics.median(times), "rerank_documents_per_s": 32 / statistics.median(times)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--json")
    ap.add_argument("--vectors")
    ap.add_argument("--rerank", action="store_true")
    args = ap.parse_args()
    url = args.url.rstrip("/")
    if args.rerank:
        print(json.dumps(rerank(url)))
        return
    seed = iter(range(1, 1_000_000))
    embed(url, [ids(next(seed))])  # warm-up
    single = []
    for _ in range(10):
        t = time.perf_counter()
        embed(url, [ids(next(seed))])
        single.append(time.perf_counter() - t)
    batch = []
    for _ in range(3):
        inputs = [ids(next(seed)) for _ in range(64)]
        t = time.perf_counter()
        embed(url, inputs)
        batch.append(time.perf_counter() - t)
    seeds = [next(seed) for _ in range(64)]
    t = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda s: embed(url, [ids(s)]), seeds))
    concurrent = time.perf_counter() - t
    result = {
        "input_tokens": LEN,
        "single_ms_p50": statistics.median(single) * 1e3,
        "batch64_inputs_per_s": 64 / statistics.median(batch),
        "concurrent16_inputs_per_s": 64 / concurrent,
    }
    result["batch64_tokens_per_s"] = result["batch64_inputs_per_s"] * LEN
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.vectors:
        with open(args.vectors, "w") as f:
            json.dump(embed(url, [ids(10_000_000 + i, 16 + 24 * i) for i in range(8)]), f)


if __name__ == "__main__":
    main()
