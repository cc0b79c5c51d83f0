#!/usr/bin/env python3
"""Generate the committed reference fixtures under tests/fixtures/ from Hugging Face transformers.

Developers run this ONCE (CI never does); its outputs are committed, so the Rust tests compare
qwen-serve against transformers' own behaviour without needing Python or the big test files.

What it produces (every JSON file carries a "generator" object with the package versions used):

  tests/fixtures/templates/qwen2.5.jinja   raw chat template from the test GGUF's metadata
                                           (key tokenizer.chat_template, read with the `gguf` package)
  tests/fixtures/templates/qwen3.jinja     raw chat template from the Qwen3 tokenizer_config.json
  tests/fixtures/chat_templates.json       {"generator", "cases": [...]}: chat-template cases rendered
                                           by transformers' apply_chat_template(tokenize=False)
  tests/fixtures/tokenization.json         token ids from the GGUF tokenizer and the Qwen3
                                           tokenizer.json (add_special_tokens=False), plus decodes
  tests/fixtures/gguf_reference.json       greedy continuations + teacher-forced top-5 logits of the
                                           Q4_K_M GGUF model, dequantized to fp32 by transformers
  tests/fixtures/tiny-qwen3/               tiny random Qwen3 checkpoint (config.json,
                                           model.safetensors fp32) + reference.json logits
  tests/fixtures/tiny-qwen2/               tiny random Qwen2 checkpoint, same layout
  tests/fixtures/tiny-qwen3-moe/           tiny random Qwen3-MoE checkpoint (16 experts, top 4,
                                           renormalised, a dense layer, untied head), same layout
  tests/fixtures/tiny-qwen2-moe/           tiny random Qwen2-MoE checkpoint (8 experts, top 3, a
                                           gated shared expert, decoder_sparse_step 2), same layout
  tests/fixtures/rope_scaling.json         logits of tiny-qwen2 / tiny-qwen3 (read from their folders,
                                           so run after `tiny`) with YaRN and linear rope scaling,
                                           past the original context
  tests/fixtures/gguf_yarn_reference.json  the GGUF model under Qwen's documented YaRN (factor 4 over
                                           32768): greedy continuations and teacher-forced top-5, and
                                           how often the unscaled model's argmax agrees with them
  tests/fixtures/gguf_embeddings.json      the GGUF model's last-token embeddings (final norm's output
                                           at the last token, L2-normalised) of a few texts, and their
                                           cosine similarities
  tests/fixtures/gguf_rerank.json          the GGUF model as a reranker (Qwen3-Reranker's prompt and
                                           yes/no scoring) on a few query/document pairs

How to run (from the repository root; the venv is made once with
scripts/requirements-reference.txt):

    HF_HUB_OFFLINE=1 ~/.cache/qwen-serve/ref-venv/bin/python scripts/make_reference.py [TEST_DATA_DIR]
        [--only templates,tokenization,gguf,tiny,rope,gguf_yarn,gguf_embed,gguf_rerank]

TEST_DATA_DIR defaults to the directory printed by `bash scripts/fetch-test-data.sh`. The script
never contacts the Hugging Face Hub (it sets HF_HUB_OFFLINE=1 itself and loads only local files).
Runtime on 2 CPU cores: a few minutes, dominated by the GGUF section (fp32 dequantization ~40 s,
greedy generation ~6 tok/s).

Versions used to produce the committed fixtures (see scripts/requirements-reference.txt):
    Python 3.11.7, torch 2.15.0 (the +cu132 PyPI wheel, run on CPU), transformers 5.24.0, tokenizers 0.23.3, Jinja2 3.1.6,
    gguf 0.19.0, safetensors 0.8.0, numpy 2.4.6, accelerate 1.15.0

Deterministic: all random tensors come from seeded torch generators; generation is greedy.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
QWEN3_TOKENIZER_DIR = "qwen3-tokenizer"
SECTIONS = ("templates", "tokenization", "gguf", "tiny", "rope", "gguf_yarn", "gguf_embed", "gguf_rerank")


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def generator_info() -> dict:
    import gguf
    import jinja2
    import safetensors
    import tokenizers

    return {
        "script": "scripts/make_reference.py",
        "python": platform.python_version(),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "tokenizers": tokenizers.__version__,
        "jinja2": jinja2.__version__,
        "gguf": getattr(gguf, "__version__", None) or _dist_version("gguf"),
        "safetensors": safetensors.__version__,
    }


def _dist_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # pragma: no cover
        return None


def _dumps(obj, level: int = 0) -> str:
    """JSON with objects and lists-of-containers indented, and lists of scalars on one line.

    ensure_ascii=False keeps the non-ASCII test text readable in diffs; key order is preserved
    (the chat templates' tojson output depends on it, so Rust should parse with preserve_order).
    """
    pad, inner = "  " * level, "  " * (level + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {_dumps(v, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and any(isinstance(x, (dict, list)) for x in obj):
        items = [inner + _dumps(v, level + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":") if isinstance(obj, list) else (", ", ": "))


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = _dumps(obj) + "\n"
    assert json.loads(text) == obj
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"  wrote {path.relative_to(REPO)} ({path.stat().st_size} bytes)")


def f7(x: float) -> float:
    """Round to 7 significant digits (float32 carries ~7.2), to keep the JSON small."""
    return float(f"{float(x):.7g}")


def default_test_data_dir() -> Path:
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "fetch-test-data.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout.strip()
    return Path(out.splitlines()[-1])


def load_gguf_tokenizer(data_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(data_dir), gguf_file=GGUF_NAME)


def load_qwen3_tokenizer(data_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(data_dir / QWEN3_TOKENIZER_DIR))


def read_gguf_chat_template(data_dir: Path) -> str:
    import gguf

    reader = gguf.GGUFReader(str(data_dir / GGUF_NAME))
    field = reader.fields["tokenizer.chat_template"]
    return field.contents()


def read_qwen3_chat_template(data_dir: Path) -> str:
    with open(data_dir / QWEN3_TOKENIZER_DIR / "tokenizer_config.json", encoding="utf-8") as f:
        return json.load(f)["chat_template"]


# ----------------------------------------------------------------------------------------------
# 1. chat templates
# ----------------------------------------------------------------------------------------------

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a city. Température en °C; 天气预报.",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "object",
                        "description": "Where to look up the weather",
                        "properties": {
                            "city": {"type": "string", "description": "City name, e.g. \"Zürich\""},
                            "country": {"type": "string", "description": "ISO 3166 code"},
                        },
                        "required": ["city"],
                    },
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7, "default": 1},
                },
                "required": ["location"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_docs",
            "description": "Search the documentation & return <= 5 results.",
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {"type": "string"},
                    "filters": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "field": {"type": "string"},
                                "values": {"type": "array", "items": {"type": "string"}},
                                "exact": {"type": "boolean"},
                            },
                        },
                    },
                    "threshold": {"type": "number"},
                },
                "required": ["query"],
            },
        },
    },
]

WEATHER_ARGS = {"location": {"city": "東京", "country": "JP"}, "unit": "celsius", "days": 2}
SEARCH_ARGS = {
    "query": "tokenizer \"byte-level\" <BPE> & merges",
    "filters": [{"field": "lang", "values": ["rust", "python"], "exact": True}, {"field": "x", "values": []}],
    "threshold": 0.5,
    "limit": None,
}

SPECIAL_CONTENT = (
    'Ünïcödé ✓ — 中文 — 日本語 — emoji 🦀👩‍💻\n'
    'Line two with "double" and \'single\' quotes, a <tag attr="1"> & an &amp; entity.\n'
    "\tTabbed line; backslash \\ and braces {{ not jinja }} {% raw %}\n\n"
    "Trailing spaces   "
)


def _tool_call(name, arguments, call_id):
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def template_cases(kind: str) -> list[dict]:
    """Returns (name, messages, tools, add_generation_prompt, kwargs) dicts for one template."""
    sys_msg = {"role": "system", "content": "You are a terse assistant. Answer in one sentence."}
    cases = []

    def case(name, messages, tools=None, gen=True, kwargs=None):
        cases.append(
            {
                "name": name,
                "messages": messages,
                "tools": tools,
                "add_generation_prompt": gen,
                "kwargs": kwargs or {},
            }
        )

    case("single_user", [{"role": "user", "content": "Hello! Who are you?"}], gen=True)
    case("single_user_no_generation_prompt", [{"role": "user", "content": "Hello! Who are you?"}], gen=False)
    case("system_user", [sys_msg, {"role": "user", "content": "What is 2+2?"}], gen=True)
    multi = [
        sys_msg,
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Germany?"},
    ]
    case("multi_turn", multi, gen=True)
    case(
        "multi_turn_ending_assistant_no_generation_prompt",
        [
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Germany?"},
            {"role": "assistant", "content": "Berlin."},
        ],
        gen=False,
    )
    case("tools_no_system", [{"role": "user", "content": "Weather in Tokyo?"}], tools=TOOLS, gen=True)
    case("tools_with_system", [sys_msg, {"role": "user", "content": "Weather in Tokyo?"}], tools=TOOLS, gen=True)
    case(
        "tool_calls_dict_arguments_two_tool_results",
        [
            {"role": "user", "content": "Weather in Tokyo, and search the docs for BPE."},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    _tool_call("get_weather", WEATHER_ARGS, "call_1"),
                    _tool_call("search_docs", SEARCH_ARGS, "call_2"),
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": '{"temp": 21.5, "sky": "晴れ"}'},
            {"role": "tool", "tool_call_id": "call_2", "name": "search_docs", "content": "[]"},
        ],
        tools=TOOLS,
        gen=True,
    )
    case(
        "tool_calls_string_arguments_with_content",
        [
            sys_msg,
            {"role": "user", "content": "Search the docs for merges."},
            {
                "role": "assistant",
                "content": "Let me search.",
                "tool_calls": [
                    _tool_call("search_docs", '{"query": "merges", "threshold": 0.25}', "call_9"),
                ],
            },
            {"role": "tool", "tool_call_id": "call_9", "content": "1. merges.txt format\n2. BPE ranks"},
            {"role": "assistant", "content": "Two results: merges.txt format and BPE ranks."},
            {"role": "user", "content": "Thanks."},
        ],
        tools=TOOLS,
        gen=True,
    )
    case(
        "three_tool_results_in_a_row_then_answer",
        [
            {"role": "user", "content": "Weather in Tokyo, Paris and Lima?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    _tool_call("get_weather", {"location": {"city": "Tokyo"}}, "a"),
                    _tool_call("get_weather", {"location": {"city": "Paris"}}, "b"),
                    _tool_call("get_weather", {"location": {"city": "Lima"}}, "c"),
                ],
            },
            {"role": "tool", "tool_call_id": "a", "content": "21"},
            {"role": "tool", "tool_call_id": "b", "content": "14"},
            {"role": "tool", "tool_call_id": "c", "content": "19"},
            {"role": "assistant", "content": "Tokyo 21 °C, Paris 14 °C, Lima 19 °C."},
        ],
        tools=TOOLS,
        gen=False,
    )
    case(
        "special_characters_in_content",
        [
            {"role": "system", "content": "Réponds en français. <sys> & \"quotes\""},
            {"role": "user", "content": SPECIAL_CONTENT},
            {"role": "assistant", "content": "D'accord : « guillemets » & <b>gras</b>\n\n"},
            {"role": "user", "content": "<|im_start|> literal control text <|im_end|> and <tool_call> too"},
        ],
        gen=True,
    )
    case(
        "mid_conversation_system_message",
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "system", "content": "From now on answer in German."},
            {"role": "user", "content": "How are you?"},
        ],
        gen=True,
    )

    if kind == "qwen2.5":
        # OpenAI clients send content=null next to tool_calls; transformers drops None-valued keys
        # before rendering, so the template sees no `content` at all.
        case(
            "tool_calls_null_content",
            [
                {"role": "user", "content": "Weather in Lima?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [_tool_call("get_weather", {"location": {"city": "Lima"}, "unit": "celsius"}, "x")],
                },
                {"role": "tool", "tool_call_id": "x", "content": "19"},
            ],
            tools=TOOLS,
            gen=True,
        )
        case(
            "extra_kwargs_ignored",
            [{"role": "user", "content": "Hello"}],
            gen=True,
            kwargs={"enable_thinking": False},
        )
    else:
        q = [{"role": "user", "content": "Is 17 prime?"}]
        case("enable_thinking_false", q, gen=True, kwargs={"enable_thinking": False})
        case("enable_thinking_true", q, gen=True, kwargs={"enable_thinking": True})
        case("enable_thinking_false_no_generation_prompt", q, gen=False, kwargs={"enable_thinking": False})
        case(
            "think_in_history_before_and_after_last_query",
            [
                sys_msg,
                {"role": "user", "content": "Is 17 prime?"},
                {
                    "role": "assistant",
                    "content": "<think>\nCheck divisors up to 4: 2, 3 do not divide 17.\n</think>\n\nYes, 17 is prime.",
                },
                {"role": "user", "content": "And 21?"},
                {"role": "assistant", "content": "<think>\n21 = 3 * 7.\n</think>\n\nNo, 21 = 3 × 7."},
            ],
            gen=False,
        )
        case(
            "think_in_history_then_new_query",
            [
                {"role": "user", "content": "Is 17 prime?"},
                {"role": "assistant", "content": "<think>\nYes.\n</think>\n\nYes."},
                {"role": "user", "content": "And 21?"},
            ],
            gen=True,
            kwargs={"enable_thinking": True},
        )
        case(
            "reasoning_content_field",
            [
                {"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": "4.", "reasoning_content": "Simple arithmetic: 2+2=4."},
                {"role": "user", "content": "Times 3?"},
                {"role": "assistant", "content": "\n12.", "reasoning_content": "\n4*3 = 12\n\n"},
            ],
            gen=False,
        )
        case(
            "multi_step_tool_with_think_and_tool_response_user_message",
            [
                {"role": "user", "content": "Weather in Tokyo?"},
                {
                    "role": "assistant",
                    "content": "<think>\nI should call get_weather.\n</think>\n\n",
                    "tool_calls": [_tool_call("get_weather", WEATHER_ARGS, "w1")],
                },
                {"role": "tool", "tool_call_id": "w1", "content": '{"temp": 21.5}'},
                {
                    "role": "assistant",
                    "content": "<think>\nAlso search.\n</think>\n\nChecking docs too.",
                    "tool_calls": [_tool_call("search_docs", {"query": "weather"}, "s1")],
                },
                {"role": "user", "content": "<tool_response>\n[]\n</tool_response>"},
            ],
            tools=TOOLS,
            gen=True,
        )
    return cases


def run_templates(data_dir: Path, gen: dict) -> None:
    print("[templates]")
    tdir = FIXTURES / "templates"
    tdir.mkdir(parents=True, exist_ok=True)
    sources = {"qwen2.5": read_gguf_chat_template(data_dir), "qwen3": read_qwen3_chat_template(data_dir)}
    for kind, src in sources.items():
        path = tdir / f"{kind}.jinja"
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(src)
        print(f"  wrote {path.relative_to(REPO)} ({path.stat().st_size} bytes)")

    # Any tokenizer object will do: the template source is passed explicitly. Check the GGUF tokenizer
    # carries the same template as the gguf package reads, so the two views agree.
    tok = load_qwen3_tokenizer(data_dir)
    gtok = load_gguf_tokenizer(data_dir)
    assert gtok.chat_template == sources["qwen2.5"], "GGUF template differs between gguf and transformers"
    assert tok.chat_template == sources["qwen3"], "Qwen3 template differs between tokenizer_config and tokenizer"

    out = []
    for kind, src in sources.items():
        for c in template_cases(kind):
            expected = tok.apply_chat_template(
                copy.deepcopy(c["messages"]),
                tools=copy.deepcopy(c["tools"]),
                chat_template=src,
                tokenize=False,
                add_generation_prompt=c["add_generation_prompt"],
                **c["kwargs"],
            )
            assert isinstance(expected, str)
            out.append({"template": kind, **c, "expected": expected})
    write_json(FIXTURES / "chat_templates.json", {"generator": gen, "cases": out})
    print(f"  {len(out)} cases: " + ", ".join(f"{k}={sum(c['template'] == k for c in out)}" for k in sources))
    for kind in sources:
        ex = next(c for c in out if c["template"] == kind and c["name"] == "tool_calls_dict_arguments_two_tool_results")
        print(f"  --- {kind} / {ex['name']} ---\n{ex['expected']}\n  --- end ---")


# ----------------------------------------------------------------------------------------------
# 2. tokenization
# ----------------------------------------------------------------------------------------------


def tokenization_texts() -> list[tuple[str, str]]:
    accented = "café naïve résumé Ångström señor Øresund"
    return [
        ("english", "The quick brown fox jumps over the lazy dog."),
        ("english_leading_trailing_spaces", "  Hello, world!  "),
        (
            "python_code",
            "def fib(n):\n    if n < 2:\n        return n\n\treturn fib(n - 1) + fib(n - 2)\n\n\nprint(fib(10))  # 55\n",
        ),
        ("tabs", "\tone\n\t\ttwo\n\t \t mixed"),
        ("newlines_3", "\n\n\n"),
        ("spaces_newline_spaces", "  \n  "),
        ("many_spaces", "a          b"),
        ("crlf", "line one\r\nline two\r\n"),
        ("numbers", "12345 3.14159"),
        ("numbers_long", "In 2024, 1,234,567.89 people paid $99.99 (≈ €91,50) — 100%."),
        ("contractions", "I'm, you'll, they'D, we've, she's, IT'S, don't"),
        ("chinese", "你好，世界！我们正在测试分词器。"),
        ("japanese", "こんにちは世界。カタカナとひらがなと漢字のテストです。"),
        ("korean", "안녕하세요 세계"),
        ("emoji_simple", "I love 🦀 and 🐍!"),
        ("emoji_zwj", "Family: 👨‍👩‍👧‍👦, coder: 👩🏽‍💻, rainbow flag: 🏳️‍🌈"),
        ("emoji_flags", "🇯🇵🇫🇷🇺🇸🇨🇳"),
        ("accented_nfc", unicodedata.normalize("NFC", accented)),
        ("accented_nfd", unicodedata.normalize("NFD", accented)),
        ("combining_marks", "Z\u0351\u036b\u0343a\u0310l\u0357g\u0310o e\u0301 n\u0303"),
        ("special_tokens_inline", "<|im_start|>user\nhi<|im_end|>"),
        ("special_tokens_chat", "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n"),
        ("tool_call_tags", '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'),
        ("endoftext_inline", "end<|endoftext|>start"),
        ("think_tags", "<think>\nhmm\n</think>\n\nanswer"),
        ("fim_tokens", "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>"),
        ("pad_token_text", "[PAD151665]"),
        ("special_token_lookalike", "<|im_start |> <|unknown|> <|im_end"),
        ("empty", ""),
        ("single_space", " "),
        ("math_symbols", "∑∫√∞ ≠ ≤ ≥ ← → ⊕ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛"),
        (
            "long_mixed_paragraph",
            "Qwen-serve streams tokens over HTTP/1.1 (chunked) and SSE; it's written in Rust 🦀. "
            "Latency p50=12.5ms, p99=48ms at 1,024 concurrent requests. 中文混合 English text, "
            "日本語も少し。Ça marche très bien!\n\n"
            "    fn main() {\n        println!(\"{}\", 42);\n    }\n"
            "URLs like https://example.com/a?b=c&d=e#frag and emails like dev@example.org. "
            "Tabs\tand   multiple   spaces, end.",
        ),
    ]


def run_tokenization(data_dir: Path, gen: dict) -> None:
    print("[tokenization]")
    gtok = load_gguf_tokenizer(data_dir)
    qtok = load_qwen3_tokenizer(data_dir)
    named = tokenization_texts()
    names = [n for n, _ in named]
    texts = [t for _, t in named]
    gguf_ids = [gtok.encode(t, add_special_tokens=False) for t in texts]
    qwen3_ids = [qtok.encode(t, add_special_tokens=False) for t in texts]
    for n, t, a, b in zip(names, texts, gguf_ids, qwen3_ids):
        # Both tokenizers are byte-level BPE over the same merges; they differ only in added tokens.
        if a != b:
            print(f"  note: gguf and qwen3 ids differ for {n!r}: {a} vs {b}")
        # Round trip through the GGUF tokenizer's decode.
        if gtok.decode(a) != t:
            print(f"  note: gguf decode(encode(x)) != x for {n!r}: {gtok.decode(a)!r}")

    by_name = dict(zip(names, gguf_ids))
    decode_inputs = [
        ("special_tokens_inline", by_name["special_tokens_inline"]),
        ("special_tokens_chat", by_name["special_tokens_chat"]),
        ("tool_call_tags", by_name["tool_call_tags"]),
        ("endoftext_inline", by_name["endoftext_inline"]),
        ("fim_tokens", by_name["fim_tokens"]),
        ("chinese", by_name["chinese"]),
        ("emoji_zwj", by_name["emoji_zwj"]),
        ("english_leading_trailing_spaces", by_name["english_leading_trailing_spaces"]),
        ("emoji_flags", by_name["emoji_flags"]),
        ("im_end_only", [151645]),
        ("pad_ids", [151643, 151665, 151935]),
    ]
    # Prefixes that end in the middle of a multi-byte UTF-8 character: the decoder replaces the
    # incomplete bytes with U+FFFD (errors="replace").
    found = 0
    for src in ("emoji_zwj", "emoji_simple", "korean", "math_symbols", "combining_marks"):
        ids = by_name[src]
        k = next((k for k in range(1, len(ids)) if "\ufffd" in gtok.decode(ids[:k])), None)
        if k is not None:
            decode_inputs.append((f"{src}_partial_utf8_prefix", ids[:k]))
            found += 1
    assert found >= 2, "expected partial-UTF-8 prefixes"
    # A lone continuation byte token in the middle.
    decode_inputs.append(("lone_byte_tokens", [9707, 378, 1879, 235]))
    decode = []
    for name, ids in decode_inputs:
        for skip in (False, True):
            decode.append(
                {"name": name, "ids": ids, "skip_special_tokens": skip, "text": gtok.decode(ids, skip_special_tokens=skip)}
            )
    write_json(
        FIXTURES / "tokenization.json",
        {
            "generator": gen,
            "names": names,
            "texts": texts,
            "gguf_ids": gguf_ids,
            "qwen3_ids": qwen3_ids,
            "decode": decode,
        },
    )
    for n, t, a in list(zip(names, texts, gguf_ids))[:4]:
        print(f"  {n}: {t!r} -> {a}")


# ----------------------------------------------------------------------------------------------
# 3. teacher-forced GGUF reference
# ----------------------------------------------------------------------------------------------

FIB_PROMPT = "Write a Python function that returns the n-th Fibonacci number."
GGUF_PROMPTS = [
    # (name, kind, text, max_new_tokens)
    ("quicksort_prefix", "raw", "def quicksort(arr):", 32),
    ("english_sentence", "raw", "The capital of France is", 32),
    ("short_list", "raw", "Three primary colors:\n1. Red\n2.", 32),
    ("fibonacci", "chat", FIB_PROMPT, 48),
    ("list_vs_tuple", "chat", "What is the difference between a list and a tuple in Python? Answer briefly.", 32),
    ("reverse_string_rust", "chat", "How do I reverse a string in Rust?", 32),
]
STOP_IDS = [151645, 151643]  # <|im_end|>, <|endoftext|>


def run_gguf(data_dir: Path, gen: dict) -> None:
    from transformers import AutoModelForCausalLM

    print("[gguf]")
    torch.manual_seed(0)
    tok = load_gguf_tokenizer(data_dir)
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(
        str(data_dir), gguf_file=GGUF_NAME, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    print(f"  loaded GGUF model in {time.time() - t0:.1f}s ({type(model).__name__})")
    template = read_gguf_chat_template(data_dir)

    records = []
    for name, kind, text, max_new in GGUF_PROMPTS:
        rec = {"name": name, "kind": kind}
        if kind == "chat":
            prompt_text = tok.apply_chat_template(
                [{"role": "user", "content": text}], chat_template=template, tokenize=False, add_generation_prompt=True
            )
            rec["user_message"] = text
        else:
            prompt_text = text
        prompt_ids = tok.encode(prompt_text, add_special_tokens=False)
        t0 = time.time()
        with torch.no_grad():
            inp = torch.tensor([prompt_ids])
            out = model.generate(
                inp,
                attention_mask=torch.ones_like(inp),
                max_new_tokens=max_new,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                repetition_penalty=1.0,
                eos_token_id=STOP_IDS,
                pad_token_id=151643,
            )
        cont = out[0, len(prompt_ids) :].tolist()
        gen_s = time.time() - t0
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids + cont])).logits[0].float()
        n = len(prompt_ids)
        pred = logits[n - 1 : n - 1 + len(cont)]
        top = torch.topk(pred, 5, dim=-1)
        top_ids = top.indices.tolist()
        top_logits = [[f7(v) for v in row] for row in top.values.tolist()]
        mismatches = [i for i, (t, row) in enumerate(zip(cont, top_ids)) if row[0] != t]
        if mismatches:
            print(f"  note: {name}: teacher-forced argmax != generated token at positions {mismatches}")
        rec.update(
            {
                "prompt_text": prompt_text,
                "prompt_ids": prompt_ids,
                "max_new_tokens": max_new,
                "continuation_ids": cont,
                "continuation_text": tok.decode(cont),
                "top5_ids": top_ids,
                "top5_logits": top_logits,
            }
        )
        records.append(rec)
        print(f"  {name}: {len(prompt_ids)} prompt + {len(cont)} generated ({gen_s:.1f}s): {rec['continuation_text']!r}")
    write_json(
        FIXTURES / "gguf_reference.json",
        {
            "generator": gen,
            "model_file": GGUF_NAME,
            "model_dtype": "float32 (dequantized by transformers from Q4_K_M)",
            "stop_ids": STOP_IDS,
            "prompts": records,
        },
    )


# ----------------------------------------------------------------------------------------------
# 4. tiny random checkpoints
# ----------------------------------------------------------------------------------------------

TINY_IDS = [0, 17, 511, 255, 1, 42, 300, 128, 7, 7, 7, 499, 64, 333, 2, 450, 99, 256, 12, 401]
PREFILL = 13


def tiny_configs():
    from transformers import Qwen2Config, Qwen2MoeConfig, Qwen3Config, Qwen3MoeConfig

    common = dict(
        vocab_size=512,
        num_hidden_layers=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        hidden_act="silu",
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        use_sliding_window=False,
        bos_token_id=1,
        eos_token_id=2,
        torch_dtype="float32",
    )
    qwen3 = Qwen3Config(
        hidden_size=64,
        intermediate_size=192,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # != 64 / 4, like Qwen3-0.6B (1024 hidden, 16 heads, head_dim 128)
        attention_bias=False,
        **common,
    )
    qwen2 = Qwen2Config(
        hidden_size=112,
        intermediate_size=304,
        num_attention_heads=7,
        num_key_value_heads=1,
        **common,
    )
    # MoE: the real models' routing features at toy sizes. Qwen3-30B-A3B routes to 8 of 128
    # experts with renormalised weights (norm_topk_prob) and no shared expert; Qwen1.5-MoE-A2.7B
    # / Qwen2-57B-A14B route to 4 of 60 / 8 of 64 without renormalising, add a shared expert
    # behind a sigmoid gate, and carry q/k/v biases. mlp_only_layers and decoder_sparse_step
    # (dense layers among sparse ones) are exercised too, and the Qwen3 one has an untied head.
    moe_common = dict(common, tie_word_embeddings=False)
    qwen3_moe = Qwen3MoeConfig(
        hidden_size=64,
        intermediate_size=96,
        moe_intermediate_size=16,
        num_experts=16,
        num_experts_per_tok=4,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[1],
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        attention_bias=False,
        **{k: v for k, v in moe_common.items() if k != "num_hidden_layers"},
    )
    qwen2_moe = Qwen2MoeConfig(
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=64,
        num_experts=8,
        num_experts_per_tok=3,
        norm_topk_prob=False,
        decoder_sparse_step=2,
        mlp_only_layers=[],
        num_attention_heads=4,
        num_key_value_heads=2,
        **dict(common),
    )
    return {
        "tiny-qwen3": (qwen3, "Qwen3ForCausalLM"),
        "tiny-qwen2": (qwen2, "Qwen2ForCausalLM"),
        "tiny-qwen3-moe": (qwen3_moe, "Qwen3MoeForCausalLM"),
        "tiny-qwen2-moe": (qwen2_moe, "Qwen2MoeForCausalLM"),
    }


def reinit_(model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32) * 0.2
            if name.endswith("norm.weight"):
                p.copy_(1.0 + noise)
            else:
                p.copy_(noise)


def full_logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def incremental_logits(model, ids, prefill: int) -> torch.Tensor:
    with torch.no_grad():
        out = model(torch.tensor([ids[:prefill]]), use_cache=True)
        cache = _cache_of(out)
        rows = [out.logits[0]]
        for pos in range(prefill, len(ids)):
            out = model(
                torch.tensor([[ids[pos]]]),
                cache=cache,
                use_cache=True,
                position_ids=torch.tensor([[pos]]),
            )
            cache = _cache_of(out)
            rows.append(out.logits[0])
    return torch.cat(rows, dim=0).float()


def _interleave_perm(head_dim: int) -> torch.Tensor:
    # Applying half-split ("NeoX") rope to dims permuted by this equals applying interleaved ("GPT-J")
    # rope to the original dims: i.e. a model that uses the wrong rope layout.
    half = head_dim // 2
    perm = []
    for i in range(half):
        perm += [i, i + half]
    return torch.tensor(perm)


def perturbations(name: str, model, cfg) -> dict:
    """Max |logit diff| of plausible implementation mistakes against the reference logits."""
    ref = full_logits(model, TINY_IDS)
    res = {}
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads

    def diff(m):
        return float((full_logits(m, TINY_IDS) - ref).abs().max())

    # wrong rope layout: permute the q/k output rows per head (and q/k norm weights)
    m = copy.deepcopy(model)
    perm = _interleave_perm(hd)
    with torch.no_grad():
        for layer in m.model.layers:
            a = layer.self_attn
            for proj, nh in ((a.q_proj, heads), (a.k_proj, kv)):
                idx = torch.cat([perm + h * hd for h in range(nh)])
                proj.weight.copy_(proj.weight[idx])
                if proj.bias is not None:
                    proj.bias.copy_(proj.bias[idx])
            for norm_name in ("q_norm", "k_norm"):
                if hasattr(a, norm_name):
                    w = getattr(a, norm_name).weight
                    w.copy_(w[perm])
    res["interleaved_rope_instead_of_half_split"] = diff(m)

    # rope theta 1e4 instead of 1e6
    c2 = copy.deepcopy(cfg)
    c2.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
    m = type(model)(c2).eval()
    m.load_state_dict(model.state_dict())
    res["rope_theta_1e4_instead_of_1e6"] = diff(m)

    # rms_norm_eps 1e-5 instead of 1e-6 (expected to be small: shows the tolerance floor)
    c2 = copy.deepcopy(cfg)
    c2.rms_norm_eps = 1e-5
    m = type(model)(c2).eval()
    m.load_state_dict(model.state_dict())
    res["rms_norm_eps_1e-5_instead_of_1e-6"] = diff(m)

    # the final norm skipped
    m = copy.deepcopy(model)
    m.model.norm = torch.nn.Identity()
    res["final_norm_skipped"] = diff(m)

    if any(p.endswith("q_proj.bias") for p, _ in model.named_parameters()):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for layer in m.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.zero_()
        res["qkv_bias_zeroed"] = diff(m)

    if hasattr(model.model.layers[0].self_attn, "q_norm"):
        m = copy.deepcopy(model)
        for layer in m.model.layers:
            layer.self_attn.q_norm = torch.nn.Identity()
            layer.self_attn.k_norm = torch.nn.Identity()
        res["qk_norm_skipped"] = diff(m)

    if kv > 1 and heads // kv > 1:
        # wrong GQA mapping: query head h reads kv head (h % kv) instead of (h // (heads/kv)).
        # Equivalent weight surgery: reorder the query heads (rows of q_proj, columns of o_proj).
        group = heads // kv
        order = [(h % kv) * group + h // kv for h in range(heads)]
        m = copy.deepcopy(model)
        with torch.no_grad():
            for layer in m.model.layers:
                a = layer.self_attn
                rows = torch.cat([torch.arange(hd) + o * hd for o in order])
                a.q_proj.weight.copy_(a.q_proj.weight[rows])
                if a.q_proj.bias is not None:
                    a.q_proj.bias.copy_(a.q_proj.bias[rows])
                a.o_proj.weight.copy_(a.o_proj.weight[:, rows])
        res["gqa_modulo_mapping_instead_of_grouped"] = diff(m)

    if any(hasattr(layer.mlp, "experts") for layer in model.model.layers):
        # the top-k weights renormalised or not, and one routed expert fewer per token
        for field, value in (("norm_topk_prob", not cfg.norm_topk_prob), ("num_experts_per_tok", cfg.num_experts_per_tok - 1)):
            c2 = copy.deepcopy(cfg)
            setattr(c2, field, value)
            m = type(model)(c2).eval()
            m.load_state_dict(model.state_dict())
            res[f"{field}_{value}"] = diff(m)
        if any(hasattr(layer.mlp, "shared_expert_gate") for layer in model.model.layers):
            # the shared expert's sigmoid gate ignored (a constant 0.5)
            m = copy.deepcopy(model)
            with torch.no_grad():
                for layer in m.model.layers:
                    if hasattr(layer.mlp, "shared_expert_gate"):
                        layer.mlp.shared_expert_gate.weight.zero_()
            res["shared_expert_gate_constant_half"] = diff(m)

    for k, v in res.items():
        print(f"  {name}: perturbation {k}: max |diff| = {v:.4g}")
    return res


def router_min_gap(model, ids) -> float | None:
    """The smallest gap between the k-th and (k+1)-th routing probability over every token and
    sparse layer: a near-tie could route differently under another summation order, so the
    fixture must not have one."""
    gaps, hooks = [], []
    for layer in model.model.layers:
        if not hasattr(layer.mlp, "experts"):
            continue
        k = layer.mlp.gate.top_k

        def hook(_mod, _inp, out, k=k):
            top = torch.softmax(out[0].float(), dim=-1).sort(dim=-1, descending=True).values
            gaps.append(float((top[:, k - 1] - top[:, k]).min()))

        hooks.append(layer.mlp.gate.register_forward_hook(hook))
    full_logits(model, ids)
    for h in hooks:
        h.remove()
    return min(gaps) if gaps else None


def run_tiny(data_dir: Path, gen: dict) -> None:
    import transformers as tf
    from safetensors.torch import load_file

    print("[tiny]")
    torch.manual_seed(0)
    for seed, (folder, (cfg, cls_name)) in enumerate(tiny_configs().items(), start=1):
        cls = getattr(tf, cls_name)
        cfg._attn_implementation = "eager"
        model = cls(cfg).eval()
        reinit_(model, seed=1000 + seed)
        tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        assert tied == cfg.tie_word_embeddings, "embeddings tied or not as configured"
        gap = router_min_gap(model, TINY_IDS)
        if gap is not None:
            print(f"  {folder}: smallest gap at the top-k routing boundary {gap:.3g}")
            assert gap > 1e-4, "a near-tie in routing: pick another seed"
        out_dir = FIXTURES / folder
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in out_dir.iterdir():
            if stale.is_file():
                stale.unlink()
        model.save_pretrained(str(out_dir), safe_serialization=True)
        # save_pretrained may also write generation_config.json; the fixture needs only the two files.
        for extra in out_dir.iterdir():
            if extra.name not in ("config.json", "model.safetensors"):
                extra.unlink()
        # Real Qwen checkpoints spell the rope base as a top-level "rope_theta"; keep that spelling
        # too, so loaders written against real config.json files accept the fixture.
        cfg_path = out_dir / "config.json"
        cfg_json = json.loads(cfg_path.read_text())
        rp = cfg_json.get("rope_parameters") or {}
        cfg_json.setdefault("rope_theta", rp.get("rope_theta", 1000000.0))
        # transformers 5 writes the expert count as "num_local_experts"; the Hub's Qwen MoE
        # config.json files say "num_experts". Keep transformers' spelling in one fixture and
        # the Hub's in the other, so loaders are tested on both.
        if folder == "tiny-qwen2-moe" and "num_local_experts" in cfg_json:
            cfg_json["num_experts"] = cfg_json.pop("num_local_experts")
        cfg_path.write_text(json.dumps(cfg_json, indent=2, sort_keys=True) + "\n")
        for f in out_dir.iterdir():
            f.chmod(0o644)

        # Reload from disk with transformers and check it reproduces the in-memory model.
        reloaded = cls.from_pretrained(str(out_dir), dtype=torch.float32, attn_implementation="eager").eval()
        tensors = load_file(str(out_dir / "model.safetensors"))
        assert all(t.dtype == torch.float32 for t in tensors.values())

        logits = full_logits(model, TINY_IDS)
        reload_diff = float((full_logits(reloaded, TINY_IDS) - logits).abs().max())
        inc = incremental_logits(model, TINY_IDS, PREFILL)
        inc_diff = float((inc - logits).abs().max())
        print(
            f"  {folder}: {sum(p.numel() for p in model.parameters())} params, tensors {sorted(tensors)[:3]}..., "
            f"logit range [{float(logits.min()):.3f}, {float(logits.max()):.3f}], std {float(logits.std()):.3f}"
        )
        print(f"  {folder}: reload max |diff| = {reload_diff:.3g}; incremental (prefill {PREFILL} + "
              f"{len(TINY_IDS) - PREFILL} decode) vs full max |diff| = {inc_diff:.3g}")
        assert reload_diff == 0.0 or reload_diff < 1e-5
        pert = perturbations(folder, model, cfg)
        write_json(
            out_dir / "reference.json",
            {
                "generator": gen,
                "input_ids": TINY_IDS,
                "logits": [[f7(v) for v in row] for row in logits.tolist()],
                "prefill_len": PREFILL,
                "logits_incremental": [[f7(v) for v in row] for row in inc.tolist()],
                "incremental_vs_full_max_abs_diff": inc_diff,
                "perturbation_max_abs_diff": pert,
                **({"router_min_topk_gap": gap} if gap is not None else {}),
            },
        )
        total = sum(f.stat().st_size for f in out_dir.iterdir())
        print(f"  {folder}: folder size {total} bytes")


# ----------------------------------------------------------------------------------------------
# 5. rope scaling on the tiny checkpoints
# ----------------------------------------------------------------------------------------------

# Each case: a tiny fixture, the config.json keys that change (as a user would write them: the
# Hub's `rope_scaling` with `type`, or transformers 5's `rope_parameters`), and a sequence past
# the original context, so the scaled frequencies and YaRN's attention factor both matter.
# The tiny contexts need a small rope base for YaRN's ramp to span several dimensions (at 1e6
# all but the first would be interpolated): the first case sets the top-level `rope_theta`
# (which `rope_scaling`, having none, takes), the second the base inside `rope_parameters`
# (which wins over the fixture's top-level 1e6, as in transformers).
ROPE_CASES = [
    ("qwen2_yarn", "tiny-qwen2", 64, {
        "max_position_embeddings": 64,
        "rope_theta": 10.0,
        "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    }),
    ("qwen3_yarn_parameters", "tiny-qwen3", 60, {
        "max_position_embeddings": 120,
        "rope_parameters": {"rope_type": "yarn", "rope_theta": 100.0, "factor": 2.5, "original_max_position_embeddings": 48,
                            "beta_fast": 2, "beta_slow": 0.5, "attention_factor": 1.3, "truncate": False},
    }),
    ("qwen3_linear", "tiny-qwen3", 64, {
        "max_position_embeddings": 32,
        "rope_scaling": {"rope_type": "linear", "factor": 2.0},
    }),
]


def _rope_model(fixture: str, overrides: dict, tmp: Path):
    import transformers as tf

    src = FIXTURES / fixture
    cfg_json = json.loads((src / "config.json").read_text())
    cfg_json.update(copy.deepcopy(overrides))
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.json").write_text(json.dumps(cfg_json))
    link = tmp / "model.safetensors"
    if not link.exists():
        link.symlink_to(src / "model.safetensors")
    cls = getattr(tf, cfg_json["architectures"][0])
    return cls.from_pretrained(str(tmp), dtype=torch.float32, attn_implementation="eager").eval()


def run_rope(data_dir: Path, gen: dict) -> None:
    import tempfile

    print("[rope]")
    cases = []
    with tempfile.TemporaryDirectory() as tmpdir:
        for name, fixture, length, overrides in ROPE_CASES:
            ids = [(i * 37 + 11) % 512 for i in range(length)]
            positions = sorted(set(range(0, length, 7)) | {length - 1})
            model = _rope_model(fixture, overrides, Path(tmpdir) / name)
            logits = full_logits(model, ids)[positions]
            # Plausible mistakes, each of which the Rust test must be able to see.
            field = "rope_scaling" if "rope_scaling" in overrides else "rope_parameters"
            mistakes = {"rope_scaling_ignored": {field: None} if field == "rope_scaling" else {field: {"rope_type": "default", "rope_theta": 1000000.0}}}
            if overrides[field].get("rope_type", overrides[field].get("type")) == "yarn":
                mistakes["attention_factor_1"] = {field: dict(overrides[field], attention_factor=1.0)}
                mistakes["truncate_flipped"] = {field: dict(overrides[field], truncate=not overrides[field].get("truncate", True))}
            pert = {}
            for mistake, change in mistakes.items():
                wrong = _rope_model(fixture, dict(overrides, **change), Path(tmpdir) / f"{name}-{mistake}")
                pert[mistake] = float((full_logits(wrong, ids)[positions] - logits).abs().max())
            print(f"  {name}: {len(ids)} tokens, perturbations {pert}")
            cases.append({
                "name": name,
                "fixture": fixture,
                "config": overrides,
                "input_ids": ids,
                "positions": positions,
                "logits": [[f7(v) for v in row] for row in logits.tolist()],
                "perturbation_max_abs_diff": pert,
            })
    write_json(FIXTURES / "rope_scaling.json", {"generator": gen, "cases": cases})


# ----------------------------------------------------------------------------------------------
# 6. the GGUF model under YaRN
# ----------------------------------------------------------------------------------------------

# Qwen's model cards' block for contexts past 32K (what `--rope-scaling` passes).
QWEN_YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
GGUF_YARN_PROMPTS = [p for p in GGUF_PROMPTS if p[0] in ("quicksort_prefix", "english_sentence", "fibonacci")]


def run_gguf_yarn(data_dir: Path, gen: dict) -> None:
    from transformers import AutoModelForCausalLM
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    print("[gguf_yarn]")
    tok = load_gguf_tokenizer(data_dir)
    model = AutoModelForCausalLM.from_pretrained(str(data_dir), gguf_file=GGUF_NAME, dtype=torch.float32, attn_implementation="eager").eval()
    plain_rotary = model.model.rotary_emb
    model.config.rope_parameters = dict(QWEN_YARN, rope_theta=model.config.rope_parameters["rope_theta"])
    yarn_rotary = Qwen2RotaryEmbedding(config=model.config)
    print(f"  yarn attention scaling {yarn_rotary.attention_scaling:.4f}")
    template = read_gguf_chat_template(data_dir)
    records = []
    for name, kind, text, max_new in GGUF_YARN_PROMPTS:
        if kind == "chat":
            text = tok.apply_chat_template([{"role": "user", "content": text}], chat_template=template, tokenize=False, add_generation_prompt=True)
        ids = tok.encode(text, add_special_tokens=False)
        model.model.rotary_emb = yarn_rotary
        with torch.no_grad():
            inp = torch.tensor([ids])
            out = model.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=max_new, do_sample=False, temperature=None,
                                 top_p=None, top_k=None, repetition_penalty=1.0, eos_token_id=STOP_IDS, pad_token_id=151643)
        cont = out[0, len(ids):].tolist()
        n = len(ids)
        with torch.no_grad():
            yarn_logits = model(torch.tensor([ids + cont])).logits[0, n - 1 : n - 1 + len(cont)].float()
            model.model.rotary_emb = plain_rotary
            plain_logits = model(torch.tensor([ids + cont])).logits[0, n - 1 : n - 1 + len(cont)].float()
        top = torch.topk(yarn_logits, 5, dim=-1)
        plain_agree = sum(int(a == b) for a, b in zip(plain_logits.argmax(-1).tolist(), top.indices[:, 0].tolist())) / len(cont)
        print(f"  {name}: {n} + {len(cont)}: {tok.decode(cont)!r}; unscaled argmax agrees at {plain_agree:.2f}")
        records.append({
            "name": name,
            "prompt_ids": ids,
            "continuation_ids": cont,
            "continuation_text": tok.decode(cont),
            "top5_ids": top.indices.tolist(),
            "top5_logits": [[f7(v) for v in row] for row in top.values.tolist()],
            "unscaled_top1_agreement": plain_agree,
        })
    write_json(FIXTURES / "gguf_yarn_reference.json", {"generator": gen, "model_file": GGUF_NAME, "rope_scaling": QWEN_YARN, "prompts": records})


EMBED_TEXTS = [
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:What is the capital of China?",
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other.",
    "def quicksort(arr):\n    if len(arr) <= 1:\n        return arr",
]


def run_gguf_embed(data_dir: Path, gen: dict) -> None:
    from transformers import AutoModelForCausalLM

    print("[gguf_embed]")
    tok = load_gguf_tokenizer(data_dir)
    model = AutoModelForCausalLM.from_pretrained(str(data_dir), gguf_file=GGUF_NAME, dtype=torch.float32, attn_implementation="eager").eval()
    records = []
    vectors = []
    for text in EMBED_TEXTS:
        # As a server tokenizes an embedding input: with the tokenizer's special tokens.
        ids = tok(text, add_special_tokens=True)["input_ids"]
        with torch.no_grad():
            last = model.model(torch.tensor([ids])).last_hidden_state[0, -1].float()
        unit = torch.nn.functional.normalize(last, dim=0)
        vectors.append(unit)
        records.append({"text": text, "input_ids": ids, "norm": f7(last.norm().item()), "embedding": [f7(v) for v in unit.tolist()]})
        print(f"  {len(ids)} tokens, norm {last.norm().item():.3f}: {text[:40]!r}")
    sims = [[f7(torch.dot(a, b).item()) for b in vectors] for a in vectors]
    print(f"  cosine similarities: {sims}")
    write_json(FIXTURES / "gguf_embeddings.json", {"generator": gen, "model_file": GGUF_NAME, "pooling": "last token, L2-normalised", "inputs": records, "cosine": sims})


# Qwen3-Reranker's recipe, as its model card gives it: the pair written into a fixed chat
# prompt, the score P("yes") against P("no") at the last position.
RERANK_SYSTEM = 'Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be "yes" or "no".'
RERANK_DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
RERANK_PAIRS = [
    (None, "What is the capital of China?", "The capital of China is Beijing."),
    (None, "What is the capital of China?", "Gravity is a force that attracts two bodies towards each other."),
    (None, "How do I reverse a list in Python?", "Use list.reverse() to reverse in place, or slicing: items[::-1]."),
    (None, "How do I reverse a list in Python?", "The Eiffel Tower is 330 metres tall."),
    ("Given a code question, retrieve code that answers it", "quicksort in python", "def quicksort(arr):\n    if len(arr) <= 1:\n        return arr"),
]


def run_gguf_rerank(data_dir: Path, gen: dict) -> None:
    from transformers import AutoModelForCausalLM

    print("[gguf_rerank]")
    tok = load_gguf_tokenizer(data_dir)
    model = AutoModelForCausalLM.from_pretrained(str(data_dir), gguf_file=GGUF_NAME, dtype=torch.float32, attn_implementation="eager").eval()
    prefix = f"<|im_start|>system\n{RERANK_SYSTEM}<|im_end|>\n<|im_start|>user\n"
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    records = []
    for instruction, query, document in RERANK_PAIRS:
        pair = f"<Instruct>: {instruction or RERANK_DEFAULT_INSTRUCTION}\n<Query>: {query}\n<Document>: {document}"
        # As the model card does: prefix, pair and suffix tokenized apart, then joined.
        ids = tok.encode(prefix, add_special_tokens=False) + tok.encode(pair, add_special_tokens=False) + tok.encode(suffix, add_special_tokens=False)
        with torch.no_grad():
            last = model(torch.tensor([ids])).logits[0, -1].float()
        pair_logits = torch.stack([last[no], last[yes]])
        score = torch.log_softmax(pair_logits, dim=0)[1].exp().item()
        records.append({"instruction": instruction, "query": query, "document": document, "input_ids": ids,
                        "logit_no": f7(last[no].item()), "logit_yes": f7(last[yes].item()), "score": f7(score)})
        print(f"  {len(ids)} tokens, score {score:.4f}: {query!r} / {document[:30]!r}")
    write_json(FIXTURES / "gguf_rerank.json", {"generator": gen, "model_file": GGUF_NAME, "yes_id": yes, "no_id": no, "pairs": records})


# ----------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data_dir", nargs="?", help="test-data dir (default: output of scripts/fetch-test-data.sh)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    args = ap.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {unknown}; choose from {SECTIONS}")
    data_dir = Path(args.data_dir).expanduser() if args.data_dir else default_test_data_dir()
    if not (data_dir / GGUF_NAME).exists() and any(s not in ("tiny", "rope") for s in only):
        sys.exit(f"error: {data_dir / GGUF_NAME} not found")

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    gen = generator_info()
    print(f"generator: {gen}")
    FIXTURES.mkdir(parents=True, exist_ok=True)
    runners = {"templates": run_templates, "tokenization": run_tokenization, "gguf": run_gguf, "tiny": run_tiny, "rope": run_rope, "gguf_yarn": run_gguf_yarn, "gguf_embed": run_gguf_embed, "gguf_rerank": run_gguf_rerank}
    for s in SECTIONS:
        if s in only:
            t0 = time.time()
            runners[s](data_dir, gen)
            print(f"  [{s}] done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
