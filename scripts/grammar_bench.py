#!/usr/bin/env python3
"""Grammar-held decoding against one server's llama.cpp-style `/completion` (qwen-serve and
llama-server both serve it), greedy: llama.cpp's own JSON grammar (json.gbnf) on prompts asking
for a JSON object, one stream and 16 concurrent ones, and the same single stream without the
grammar. Prints and writes (--json) output tok/s and how many outputs parse as JSON.

    grammar_bench.py URL [--json PATH] [--tokens N]
"""
import argparse
import concurrent.futures
import json
import time
import urllib.request

JSON_GBNF = r'''root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws
ws ::= | " " | "\n" [ \t]{0,20}
'''

ANIMALS = ["cat", "dog", "horse", "parrot", "goldfish", "rabbit", "hamster", "turtle", "snake", "owl", "fox", "cow", "goat", "sheep", "duck", "frog"]


def prompt(animal):
    return f"A pet {animal} named Max, aged 3, with his favourite foods and toys, as a JSON object:\n"


def complete(url, body):
    req = urllib.request.Request(url + "/completion", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def run(url, prompts, tokens, grammar):
    body = lambda p: {"prompt": p, "n_predict": tokens, "temperature": 0, "top_k": 1, **({"grammar": JSON_GBNF} if grammar else {})}
    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        replies = list(pool.map(lambda p: complete(url, body(p)), prompts))
    wall = time.time() - start
    n = sum(r["tokens_predicted"] for r in replies)
    valid = 0
    for r in replies:
        try:
            valid += isinstance(json.loads(r["content"]), dict)
        except ValueError:
            pass
    return {"tokens": n, "seconds": wall, "tok_per_s": n / wall, "valid_json": valid, "outputs": len(replies)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--json")
    ap.add_argument("--tokens", type=int, default=160)
    a = ap.parse_args()
    run(a.url, [prompt("cat")], 8, True)  # warm-up: the grammar compiled, the prompt cached
    res = {
        "single_free": run(a.url, [prompt("cat")], a.tokens, False),
        "single_grammar": run(a.url, [prompt("cat")], a.tokens, True),
        "concurrent16_grammar": run(a.url, [prompt(x) for x in ANIMALS], a.tokens, True),
    }
    for k, v in res.items():
        print(f"{k}: {v['tokens']} tokens in {v['seconds']:.2f} s = {v['tok_per_s']:.1f} tok/s; {v['valid_json']}/{v['outputs']} outputs are JSON objects")
    if a.json:
        json.dump(res, open(a.json, "w"))


if __name__ == "__main__":
    main()
