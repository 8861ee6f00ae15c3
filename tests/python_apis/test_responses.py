"""OpenAI's Responses API through the official `openai` SDK against `flare serve` of the tool
fixture (SmolLM2-135M-Instruct with a Hermes-style template), greedy, on the CPU."""

import json

import jsonschema
import openai
import pytest

from conftest import API_KEY, BASE, MODEL, WEATHER_SCHEMA

ASK = "Answer in one short sentence: what is the capital of France?"
TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": WEATHER_SCHEMA,
}
NAMED = {"type": "function", "name": "get_weather"}
CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "country": {"type": "string", "maxLength": 20},
    },
    "required": ["city", "country"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def client():
    return openai.OpenAI(base_url=f"{BASE}/v1", api_key=API_KEY, max_retries=0, timeout=300)


def test_plain_and_streamed_text_agree(client):
    r = client.responses.create(model=MODEL, input=ASK, max_output_tokens=64, temperature=0)
    assert r.status == "completed", r
    assert r.output_text.strip()
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.input_tokens_details.cached_tokens >= 0

    types, deltas = [], []
    with client.responses.stream(model=MODEL, input=ASK, max_output_tokens=64, temperature=0) as s:
        for ev in s:
            types.append(ev.type)
            if ev.type == "response.output_text.delta":
                deltas.append(ev.delta)
        final = s.get_final_response()
    assert types[0] == "response.created" and types[-1] == "response.completed", types
    assert "response.output_item.added" in types and "response.output_item.done" in types
    assert "".join(deltas) == final.output_text == r.output_text


def test_json_schema_format(client):
    r = client.responses.create(
        model=MODEL,
        input="Name a large city and its country, as JSON.",
        max_output_tokens=96,
        temperature=0,
        text={"format": {"type": "json_schema", "name": "city", "schema": CITY_SCHEMA, "strict": True}},
    )
    jsonschema.validate(json.loads(r.output_text), CITY_SCHEMA)


def test_function_tool_round_trip(client):
    ask = [{"role": "user", "content": "What is the weather like in Paris today?"}]
    r = client.responses.create(
        model=MODEL, input=ask, tools=[TOOL], tool_choice=NAMED, max_output_tokens=96, temperature=0
    )
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) == 1, r.output
    call = calls[0]
    assert call.name == "get_weather" and call.call_id
    jsonschema.validate(json.loads(call.arguments), WEATHER_SCHEMA)

    # Streamed: argument deltas reassemble into the same call.
    args = []
    with client.responses.stream(
        model=MODEL, input=ask, tools=[TOOL], tool_choice=NAMED, max_output_tokens=96, temperature=0
    ) as s:
        for ev in s:
            if ev.type == "response.function_call_arguments.delta":
                args.append(ev.delta)
        final = s.get_final_response()
    fc = [o for o in final.output if o.type == "function_call"][0]
    assert "".join(args) == fc.arguments == call.arguments

    # The result goes back as a function_call_output item; the model answers in text.
    follow = ask + [
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 22 degrees celsius."},
    ]
    r2 = client.responses.create(model=MODEL, input=follow, tools=[TOOL], max_output_tokens=64, temperature=0)
    assert r2.status in ("completed", "incomplete")
    assert r2.output_text.strip() or any(o.type == "function_call" for o in r2.output)


def test_store_previous_response_retrieve_delete(client):
    r = client.responses.create(model=MODEL, input=ASK, max_output_tokens=32, temperature=0, store=True)
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text
    r2 = client.responses.create(
        model=MODEL, input="And of Germany?", previous_response_id=r.id, max_output_tokens=32, temperature=0
    )
    assert r2.previous_response_id == r.id
    assert r2.usage.input_tokens > r.usage.input_tokens
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_unsupported_field_is_a_400_naming_it(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input=ASK, background=True)
    assert e.value.body["param"] == "background"
