"""Anthropic's Messages API through the official `anthropic` SDK against `flare serve` of the
tool fixture (SmolLM2-135M-Instruct with a Hermes-style template), greedy, on the CPU."""

import json
import re

import anthropic
import jsonschema
import pytest

from conftest import API_KEY, BASE, MODEL, WEATHER_SCHEMA

SYSTEM = "You are a concise assistant."
ASK = [{"role": "user", "content": "Answer in one short sentence: what is the capital of France?"}]
# anthropic 2.x no longer has `temperature` among its arguments; the API field is still sent.
GREEDY = {"temperature": 0}
TOOL = {"name": "get_weather", "description": "Current weather in a city.", "input_schema": WEATHER_SCHEMA}


@pytest.fixture(scope="module")
def client():
    return anthropic.Anthropic(base_url=BASE, api_key=API_KEY, max_retries=0, timeout=300)


def test_create_stream_order_and_count_tokens(client):
    m = client.messages.create(model=MODEL, max_tokens=64, system=SYSTEM, messages=ASK, extra_body=GREEDY)
    assert m.type == "message" and m.role == "assistant"
    assert m.content[0].type == "text" and m.content[0].text.strip()
    assert m.stop_reason in ("end_turn", "max_tokens")
    assert m.usage.output_tokens > 0

    # The raw events, in Anthropic's documented order.
    names = []
    text = []
    for ev in client.messages.create(
        model=MODEL, max_tokens=64, system=SYSTEM, messages=ASK, extra_body=GREEDY, stream=True
    ):
        names.append(ev.type)
        if ev.type == "content_block_delta":
            assert ev.delta.type == "text_delta"
            text.append(ev.delta.text)
        if ev.type == "message_delta":
            assert ev.delta.stop_reason == m.stop_reason
            assert ev.usage.output_tokens == m.usage.output_tokens
    order = " ".join(names)
    assert re.fullmatch(
        r"message_start( content_block_start( content_block_delta)* content_block_stop)+ message_delta message_stop",
        order,
    ), order
    assert "".join(text) == m.content[0].text

    # The SDK's stream helper assembles the same message.
    with client.messages.stream(model=MODEL, max_tokens=64, system=SYSTEM, messages=ASK, extra_body=GREEDY) as s:
        final = s.get_final_message()
    assert final.content[0].text == m.content[0].text

    # count_tokens is the prompt: Anthropic's usage splits it into uncached and cache-read.
    n = client.messages.count_tokens(model=MODEL, system=SYSTEM, messages=ASK)
    assert n.input_tokens == m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0)


def test_tool_use_round_trip(client):
    ask = [{"role": "user", "content": "What is the weather like in Paris today?"}]
    m = client.messages.create(
        model=MODEL,
        max_tokens=96,
        messages=ask,
        tools=[TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
        extra_body=GREEDY,
    )
    assert m.stop_reason == "tool_use", m
    uses = [b for b in m.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather" and uses[0].id
    jsonschema.validate(uses[0].input, WEATHER_SCHEMA)

    # Streamed: input_json_delta pieces make the same input.
    with client.messages.stream(
        model=MODEL,
        max_tokens=96,
        messages=ask,
        tools=[TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
        extra_body=GREEDY,
    ) as s:
        final = s.get_final_message()
    streamed = [b for b in final.content if b.type == "tool_use"][0]
    assert streamed.input == uses[0].input

    follow = ask + [
        {"role": "assistant", "content": [b.model_dump() for b in m.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "Sunny, 22 degrees celsius."}],
        },
    ]
    r = client.messages.create(model=MODEL, max_tokens=64, messages=follow, tools=[TOOL], extra_body=GREEDY)
    assert r.content and r.stop_reason in ("end_turn", "max_tokens", "tool_use")


def test_output_config_json_schema(client):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    }
    m = client.messages.create(
        model=MODEL,
        max_tokens=64,
        messages=[{"role": "user", "content": "Name a large city, as JSON."}],
        output_config={"format": {"type": "json_schema", "schema": schema}},
        extra_body=GREEDY,
    )
    jsonschema.validate(json.loads(m.content[0].text), schema)


def test_errors_have_anthropics_shape():
    bad = anthropic.Anthropic(base_url=BASE, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model=MODEL, max_tokens=8, messages=ASK)
    good = anthropic.Anthropic(base_url=BASE, api_key=API_KEY, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as e:
        good.messages.create(model=MODEL, max_tokens=8, messages=ASK, extra_body={"temperature": -1})
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert "temperature" in e.value.body["error"]["message"]
