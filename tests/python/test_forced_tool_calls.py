"""Forced tool calls on a model whose chat template has no tools section (the default SmolLM2):
`tool_choice: "required"` and a named tool are generated under a grammar and come back as
`tool_calls` whose arguments validate, streamed or not. Run by tests/python_conformance.rs.
"""

import json
import os

import jsonschema
import openai
import pytest

BASE_URL = os.environ["FLARE_BASE_URL"]
MODEL = os.environ["FLARE_MODEL"]
API_KEY = os.environ["FLARE_API_KEY"]

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "Call the weather tool for Paris for the next 3 days."}]


@pytest.fixture(scope="module")
def client():
    return openai.OpenAI(base_url=BASE_URL, api_key=API_KEY, max_retries=0, timeout=300)


@pytest.mark.parametrize(
    "choice", [{"type": "function", "function": {"name": "get_weather"}}, "required"], ids=["named", "required"]
)
def test_forced_call_without_a_tools_template(client, choice):
    kw = dict(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice=choice, max_tokens=80, temperature=0)
    r = client.chat.completions.create(**kw)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls", c
    calls = c.message.tool_calls
    assert calls and all(t.function.name == "get_weather" for t in calls)
    for t in calls:
        jsonschema.validate(json.loads(t.function.arguments), WEATHER["function"]["parameters"])
    # Streamed, the same call.
    got = {}
    for ch in client.chat.completions.create(stream=True, **kw):
        for tc in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
            entry = got.setdefault(tc.index, [tc.function.name, ""])
            entry[1] += tc.function.arguments or ""
    assert [tuple(got[i]) for i in sorted(got)] == [(t.function.name, t.function.arguments) for t in calls]
