"""Tool calling through the official `openai` SDK against a live `flare serve` of the tool
fixture (SmolLM2-135M-Instruct with a Qwen2.5/Hermes-style template, built by
tests/fixtures/make_tool_model.py), greedy, on the CPU. Run by tests/python_tools.rs.

Environment: FLARE_BASE_URL, FLARE_MODEL, FLARE_API_KEY, FLARE_TOOL_MODEL_DIR (the fixture
directory, for transformers' reference rendering).
"""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jsonschema  # noqa: E402
import openai  # noqa: E402
import pytest  # noqa: E402

BASE_URL = os.environ["FLARE_BASE_URL"]
MODEL = os.environ["FLARE_MODEL"]
API_KEY = os.environ["FLARE_API_KEY"]
MODEL_DIR = os.environ["FLARE_TOOL_MODEL_DIR"]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 40},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "unit"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Adds two integers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
                "additionalProperties": False,
            },
        },
    },
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
COMMON = dict(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=96, temperature=0)


@pytest.fixture(scope="module")
def client():
    return openai.OpenAI(base_url=BASE_URL, api_key=API_KEY, max_retries=0, timeout=300)


def check_calls(calls, only=None):
    assert calls, "no tool calls"
    for c in calls:
        assert c.type == "function"
        assert c.id
        assert c.function.name in SCHEMAS
        if only:
            assert c.function.name == only
        jsonschema.validate(json.loads(c.function.arguments), SCHEMAS[c.function.name])


def test_named_tool_gives_a_valid_call(client):
    r = client.chat.completions.create(tool_choice=NAMED, **COMMON)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None
    check_calls(choice.message.tool_calls, only="get_weather")
    assert len(choice.message.tool_calls) == 1


def test_required_gives_valid_calls(client):
    r = client.chat.completions.create(tool_choice="required", **COMMON)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    check_calls(choice.message.tool_calls)


def test_required_single_call_without_parallel(client):
    r = client.chat.completions.create(tool_choice="required", parallel_tool_calls=False, **COMMON)
    assert len(r.choices[0].message.tool_calls) == 1
    check_calls(r.choices[0].message.tool_calls)


def reassemble(chunks):
    calls = {}
    arg_chunks = 0
    finish = None
    for ch in chunks:
        if not ch.choices:
            continue
        d = ch.choices[0].delta
        finish = ch.choices[0].finish_reason or finish
        for tc in d.tool_calls or []:
            if tc.index not in calls:
                # The first delta of a call carries its id, type and name.
                assert tc.id and tc.type == "function" and tc.function.name, tc
                calls[tc.index] = {"id": tc.id, "name": tc.function.name, "arguments": ""}
            else:
                assert tc.id is None and tc.function.name is None, tc
            if tc.function.arguments:
                arg_chunks += 1
                calls[tc.index]["arguments"] += tc.function.arguments
    return [calls[i] for i in sorted(calls)], arg_chunks, finish


@pytest.mark.parametrize("choice", [NAMED, "required"], ids=["named", "required"])
def test_streamed_deltas_reassemble_into_the_call(client, choice):
    whole = client.chat.completions.create(tool_choice=choice, **COMMON).choices[0].message.tool_calls
    chunks = list(client.chat.completions.create(tool_choice=choice, stream=True, **COMMON))
    calls, arg_chunks, finish = reassemble(chunks)
    assert finish == "tool_calls"
    assert [(c["name"], c["arguments"]) for c in calls] == [
        (c.function.name, c.function.arguments) for c in whole
    ]
    # The arguments arrive as generated, not in one piece at the end.
    assert arg_chunks > len(calls), arg_chunks


def test_follow_up_with_the_tool_result_renders_and_answers(client):
    call = client.chat.completions.create(tool_choice=NAMED, **COMMON).choices[0].message.tool_calls[0]
    messages = ASK + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call.id, "type": "function",
                 "function": {"name": call.function.name, "arguments": call.function.arguments}}
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "sunny"})},
    ]
    r = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, max_tokens=40, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert choice.message.content or choice.message.tool_calls

    # The prompt is exactly what transformers renders (arguments as an object) and tokenizes.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    ref = json.loads(json.dumps(messages))
    ref[1]["tool_calls"][0]["function"]["arguments"] = json.loads(call.function.arguments)
    ids = tok.apply_chat_template(ref, tools=TOOLS, tokenize=True, add_generation_prompt=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    assert r.usage.prompt_tokens == len(ids)


def test_unknown_tool_name_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            tool_choice={"type": "function", "function": {"name": "nope"}}, **COMMON
        )
    assert e.value.body["param"] == "tool_choice"


def test_auto_parses_the_models_own_syntax_streamed_or_not(client):
    # `auto` (the default with tools): the fixture's template teaches <tool_call>, detected as
    # the hermes parser. Whatever the model writes, the result is well formed, and the stream
    # carries exactly the same content and calls.
    kw = dict(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=64, temperature=0)
    whole = client.chat.completions.create(**kw).choices[0]
    if whole.message.tool_calls:
        assert whole.finish_reason == "tool_calls"
        for c in whole.message.tool_calls:
            json.loads(c.function.arguments)
    else:
        assert whole.message.content
    chunks = list(client.chat.completions.create(stream=True, **kw))
    calls, _, finish = reassemble(chunks)
    content = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert finish == whole.finish_reason
    assert content == (whole.message.content or "")
    assert [(c["name"], c["arguments"]) for c in calls] == [
        (c.function.name, c.function.arguments) for c in whole.message.tool_calls or []
    ]
