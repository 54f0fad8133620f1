"""The official `openai` Python client against `trex-host serve`.

Run by `serve::the_official_openai_python_client_reads_every_reply` with the server's base URL. The
server serves a tiny random model as `tiny` and two adapters, `a` and `b`. Each check asserts on
what came back, not only that something did, and prints `ok NAME` when it passes.
"""

import sys
from typing import Literal

import openai
from pydantic import BaseModel, Field

client = openai.OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0, timeout=120)
USER = [{"role": "user", "content": "hello"}]


def ok(name):
    print(f"ok {name}", flush=True)


def greedy(model, messages=USER, **kw):
    return client.chat.completions.create(
        model=model, messages=messages, max_completion_tokens=kw.pop("max_completion_tokens", 16), temperature=0, **kw
    )


# The models list: the base model and each adapter by name.
ids = [m.id for m in client.models.list()]
assert ids == ["tiny", "a", "b"], ids
ok("models")

# A plain chat: deterministic under greedy decoding, with usage that adds up.
plain = greedy("tiny")
choice = plain.choices[0]
assert plain.object == "chat.completion", plain
assert choice.message.role == "assistant" and isinstance(choice.message.content, str), choice
assert choice.finish_reason in ("stop", "length"), choice
u = plain.usage
assert u.prompt_tokens > 5 and 1 <= u.completion_tokens <= 16, u
assert u.total_tokens == u.prompt_tokens + u.completion_tokens, u
assert greedy("tiny").choices[0].message.content == choice.message.content
ok("plain")

# A streamed chat: the deltas add up to the same reply, the last chunk carries the usage.
text = ""
finish = None
usage = None
with greedy("tiny", stream=True, stream_options={"include_usage": True}) as stream:
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
assert text == choice.message.content, (text, choice.message.content)
assert finish == choice.finish_reason, finish
assert usage is not None and usage.completion_tokens == u.completion_tokens, usage
ok("stream")

# n = 2 sampled replies under a seed: two choices, and the same seed gives the same pair.
def two():
    r = client.chat.completions.create(
        model="a", messages=USER, n=2, temperature=1.0, seed=11, max_completion_tokens=12
    )
    assert [c.index for c in r.choices] == [0, 1], r.choices
    return [c.message.content for c in r.choices]


pair = two()
assert pair == two(), pair
ok("n=2")

# A stop text: the reply is cut just before its first occurrence.
full = greedy("tiny", max_completion_tokens=24).choices[0].message.content
stop = full[3:5]
assert stop, f"the greedy reply {full!r} is too short to pick a stop text from"
cut = greedy("tiny", max_completion_tokens=24, stop=[stop]).choices[0]
assert cut.message.content == full[: full.index(stop)], (cut.message.content, full, stop)
assert cut.finish_reason == "stop", cut
ok("stop")

# An adapter by name: deterministic, and not the base model's answer.
replies = [greedy(m).choices[0].message.content for m in ("tiny", "a", "b")]
assert replies[1] == greedy("a").choices[0].message.content
assert replies[0] != replies[1] or replies[0] != replies[2], replies
ok("adapter")


# The json_schema format, through the client's own parser: every reply is a valid `Trip`.
class Trip(BaseModel):
    city: Literal["Oslo", "Lima", "Pune"]
    nights: int = Field(ge=1, le=14)
    refundable: bool


for seed in range(4):
    r = client.chat.completions.parse(
        model=["tiny", "a", "b"][seed % 3],
        messages=[{"role": "user", "content": "plan a trip"}],
        response_format=Trip,
        temperature=1.0,
        seed=seed,
        max_completion_tokens=200,
    )
    trip = r.choices[0].message.parsed
    assert isinstance(trip, Trip), r
    assert r.choices[0].finish_reason == "stop", r
ok("json_schema")


# A tool call, required and by name: the client parses the arguments into the tool's model.
class GetWeather(BaseModel):
    city: Literal["Oslo", "Lima", "Pune"]
    days: int = Field(ge=1, le=3)


tool = openai.pydantic_function_tool(GetWeather)
for choice_ in ("required", {"type": "function", "function": {"name": "GetWeather"}}):
    r = client.chat.completions.parse(
        model="b",
        messages=[{"role": "user", "content": "weather in Oslo?"}],
        tools=[tool],
        tool_choice=choice_,
        temperature=0,
        max_completion_tokens=80,
    )
    c = r.choices[0]
    assert c.finish_reason == "tool_calls", r
    call = c.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "GetWeather", call
    assert isinstance(call.function.parsed_arguments, GetWeather), call
ok("tool_call")

# Errors come back as the client's typed exceptions, with the protocol's codes.
try:
    greedy("nope")
    raise AssertionError("an unknown model was served")
except openai.NotFoundError as e:
    assert e.code == "model_not_found", e
try:
    greedy("tiny", extra_body={"temprature": 0.5})
    raise AssertionError("an unknown field was accepted")
except openai.BadRequestError as e:
    assert e.param == "temprature", e
ok("errors")
