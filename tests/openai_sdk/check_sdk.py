"""The official `openai` Python SDK against a running qwen-serve (base URL in argv[1]).

Run by tests/openai_sdk.rs, which starts the server and passes its address. Exits non-zero
on the first failed check; prints one line per check.
"""
import re
import sys

import openai

base_url = sys.argv[1]
client = openai.OpenAI(base_url=base_url + "/v1", api_key="test-key")
MODEL = "qwen-test"
FIB = "Write a Python function that returns the n-th Fibonacci number."
checks = 0


def check(name, condition, detail=""):
    global checks
    if not condition:
        print(f"FAIL {name}: {detail}")
        sys.exit(1)
    checks += 1
    print(f"ok {name}")


models = client.models.list()
check("models.list", [m.id for m in models.data] == [MODEL], models)

chat = client.chat.completions.create(
    model=MODEL, messages=[{"role": "user", "content": FIB}], max_tokens=12, temperature=0
)
text = chat.choices[0].message.content
check("chat", text.startswith("Here's a Python function"), text)
check("chat usage", chat.usage.completion_tokens == 12 and chat.usage.prompt_tokens > 0, chat.usage)

stream = client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": FIB}],
    max_tokens=12,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
pieces, usage, finish = [], None, None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.content:
            pieces.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
check("chat stream text", "".join(pieces) == text, ("".join(pieces), text))
check("chat stream usage", usage is not None and usage.completion_tokens == 12, usage)
check("chat stream finish", finish == "length", finish)

# Embeddings: the SDK asks for base64 unless told otherwise; floats and base64 decode to the
# same unit vectors (within batching's rounding: the pair ran together, the single alone).
texts = ["The capital of China is Beijing.", "Gravity attracts two bodies towards each other."]
emb = client.embeddings.create(model=MODEL, input=texts)
vecs = [d.embedding for d in emb.data]
check("embeddings", len(vecs) == 2 and len(vecs[0]) == 896 and abs(sum(x * x for x in vecs[0]) - 1) < 1e-4, emb)
check("embeddings usage", emb.usage.prompt_tokens == emb.usage.total_tokens > 0, emb.usage)
floats = client.embeddings.create(model=MODEL, input=texts[0], encoding_format="float").data[0].embedding
check("embeddings float = base64", max(abs(a - b) for a, b in zip(floats, vecs[0])) < 1e-3, (floats[:4], vecs[0][:4]))
short = client.embeddings.create(model=MODEL, input=texts[0], dimensions=64).data[0].embedding
check("embeddings dimensions", len(short) == 64 and abs(sum(x * x for x in short) - 1) < 1e-4, len(short))

# The Responses API: the same greedy text, whole and as typed stream events, and a follow-up
# through previous_response_id.
resp = client.responses.create(model=MODEL, input=FIB, max_output_tokens=12, temperature=0)
check("responses.create", resp.status == "incomplete" and resp.output_text == text, resp)
check("responses usage", resp.usage.output_tokens == 12 and resp.usage.input_tokens == chat.usage.prompt_tokens, resp.usage)
with client.responses.stream(model=MODEL, input=FIB, max_output_tokens=12, temperature=0) as stream:
    events = list(stream)
deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
# Cut at max_output_tokens, the stream ends in `response.incomplete` (as OpenAI's does).
final = events[-1]
check("responses.stream", "".join(deltas) == text and final.type == "response.incomplete" and final.response.output_text == text, events)
follow = client.responses.create(model=MODEL, input="Now in Rust.", previous_response_id=resp.id, max_output_tokens=8, temperature=0)
check("responses previous_response_id", follow.previous_response_id == resp.id and len(follow.output_text) > 0, follow)
check("responses.retrieve", client.responses.retrieve(resp.id).output_text == text, resp.id)
lp = client.responses.create(model=MODEL, input=FIB, max_output_tokens=12, temperature=0, include=["message.output_text.logprobs"], top_logprobs=2)
lps = lp.output[0].content[0].logprobs
check("responses logprobs", "".join(t.token for t in lps) == text and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in lps), lps)

# Anthropic's SDK against /v1/messages (its key goes as `x-api-key`): the same greedy text.
import anthropic  # noqa: E402

claude = anthropic.Anthropic(base_url=base_url, api_key="test-key")
fib = [{"role": "user", "content": FIB}]
# This SDK version takes no `temperature` argument; the API field still works.
greedy = {"temperature": 0}
msg = claude.messages.create(model=MODEL, max_tokens=12, messages=fib, extra_body=greedy)
check("anthropic messages.create", msg.content[0].text == text and msg.stop_reason == "max_tokens", msg)
with claude.messages.stream(model=MODEL, max_tokens=12, messages=fib, extra_body=greedy) as s:
    streamed = "".join(s.text_stream)
    final = s.get_final_message()
check("anthropic messages.stream", streamed == text and final.usage.output_tokens == 12, (streamed, final))
counted = claude.messages.count_tokens(model=MODEL, messages=fib)
check("anthropic count_tokens", counted.input_tokens == chat.usage.prompt_tokens, counted)

completion = client.completions.create(
    model=MODEL, prompt="def quicksort(arr):", max_tokens=3, temperature=0, echo=True, logprobs=2
)
c = completion.choices[0]
check("completions echo", c.text.startswith("def quicksort(arr):"), c.text)
check("completions logprobs", c.logprobs.token_logprobs[0] is None and c.logprobs.token_logprobs[-1] <= 0, c.logprobs)
check("completions top_logprobs", len(c.logprobs.top_logprobs[-1]) == 2, c.logprobs.top_logprobs)

# Structured output the SDK's way: a pydantic model becomes a strict `json_schema` (`$defs`,
# an enum, `Optional`), and the reply parses back into the model.
from typing import Literal, Optional  # noqa: E402

from pydantic import BaseModel  # noqa: E402


class Toy(BaseModel):
    name: str
    squeaks: bool


class Pet(BaseModel):
    name: str
    age: int
    kind: Literal["cat", "dog"]
    toys: list[Toy]
    vet: Optional[str]


def parse(prompt, max_tokens=200, **kwargs):
    """`chat.completions.parse`, greedy: the reply's message."""
    parsed = client.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=max_tokens, **kwargs
    )
    return parsed.choices[0]


choice = parse("Describe a cat named Tom, aged 3, who has two toys, as JSON.", response_format=Pet)
pet = choice.message.parsed
check("chat.completions.parse into a pydantic model", isinstance(pet, Pet) and pet.name == "Tom" and pet.kind == "cat", choice.message)

# Formats, bounds and maps the way pydantic writes them (`format: date`, `minimum` /
# `maximum`, `additionalProperties: {...}`); pydantic's own validation checks the reply.
import datetime  # noqa: E402

from pydantic import Field  # noqa: E402


class Checkup(BaseModel):
    pet: str
    date: datetime.date
    weight_kg: float = Field(gt=0, le=50, multiple_of=0.5)
    score: int = Field(ge=1, le=5)
    vaccines: dict[str, bool]


choice = parse("Tom the cat had a checkup on 2024-03-05: 4.5 kg, score 4 of 5, rabies and flu vaccines done. As JSON.", response_format=Checkup)
checkup = choice.message.parsed
check("parse: date, bounded numbers, a multiple and a dict", isinstance(checkup, Checkup), choice.message)
print(f"   {checkup!r}")

# A discriminated union (`oneOf` of two models told apart by a `Literal`, with pydantic's
# `discriminator`), in a list.
from typing import Annotated, Union  # noqa: E402


class Pizza(BaseModel):
    kind: Literal["pizza"]
    size_cm: int = Field(ge=20, le=50)
    toppings: list[str]


class Drink(BaseModel):
    kind: Literal["drink"]
    litres: float = Field(gt=0, le=2)


class Order(BaseModel):
    customer: str
    items: list[Annotated[Union[Pizza, Drink], Field(discriminator="kind")]]


choice = parse("Ann orders a 30 cm pizza with ham and olives, and 0.5 litres of cola. As JSON.", response_format=Order)
order = choice.message.parsed
check("parse: a discriminated union", isinstance(order, Order) and len(order.items) > 0, choice.message)
print(f"   {order!r}")

# A forced call of a strict function tool made from a pydantic model: `parse` reads its
# arguments back into the model.
class GetWeather(BaseModel):
    city: str
    unit: str = Field(pattern="^(celsius|fahrenheit)$")


choice = parse(
    "Is it cold in Oslo right now?",
    max_tokens=60,
    tools=[openai.pydantic_function_tool(GetWeather)],
    tool_choice={"type": "function", "function": {"name": "GetWeather"}},
)
call = choice.message.tool_calls[0] if choice.message.tool_calls else None
check(
    "parse: a forced call of a pydantic function tool",
    choice.finish_reason == "tool_calls" and call is not None and isinstance(call.function.parsed_arguments, GetWeather),
    choice.message,
)
print(f"   {call.function.parsed_arguments!r}")

# vLLM's structured outputs, sent as its docs send them (`extra_body`).
chat = client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "Classify this sentiment: vLLM is wonderful!"}],
    extra_body={"structured_outputs": {"choice": ["positive", "negative"]}},
)
check("structured_outputs choice", chat.choices[0].message.content in ("positive", "negative"), chat.choices[0].message)
chat = client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "Generate an email address for Alan Turing, who works in Enigma. End in .com and new line."}],
    max_tokens=30,
    # Greedy: sampled, the model may spend all 30 tokens inside `\w+` (a legal prefix cut by
    # max_tokens; it failed the check once in ~10 runs that way).
    temperature=0,
    extra_body={"structured_outputs": {"regex": r"\w+@\w+\.com\n"}},
)
email = chat.choices[0].message.content
check("structured_outputs regex", re.fullmatch(r"[0-9A-Za-z_]+@[0-9A-Za-z_]+\.com\n", email) is not None, email)
print(f"   {email!r}")

try:
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=5)
    check("bad temperature raises", False, "no exception")
except openai.BadRequestError as e:
    check("bad temperature raises BadRequestError", e.status_code == 400 and "temperature" in str(e), e)

try:
    client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    check("unknown model raises", False, "no exception")
except openai.NotFoundError as e:
    check("unknown model raises NotFoundError", e.status_code == 404, e)

print(f"{checks} passed, 0 failed")
