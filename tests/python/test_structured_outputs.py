"""Structured outputs through the real server: a corpus of JSON schemas, regexes and choices
(every output must parse and validate, and end with finish_reason "stop"), the OpenAI SDK's
`parse` with a pydantic model, litellm with `response_format`, and 400s for bad grammars while
another request keeps streaming.

Run by tests/python_conformance.rs (see test_openai_conformance.py for the environment).
Requests run concurrently so that they share engine steps.
"""

import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402
import jsonschema  # noqa: E402
import litellm  # noqa: E402
import openai  # noqa: E402
import pydantic  # noqa: E402
import pytest  # noqa: E402

from structured_corpus import CHOICES, REGEXES, SCHEMAS  # noqa: E402

BASE_URL = os.environ["FLARE_BASE_URL"]
MODEL = os.environ["FLARE_MODEL"]
API_KEY = os.environ["FLARE_API_KEY"]
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
SYSTEM = {"role": "system", "content": "You answer with JSON only."}
MAX_TOKENS = 200

litellm.telemetry = False


@pytest.fixture(scope="module")
def client():
    return openai.OpenAI(base_url=BASE_URL, api_key=API_KEY, max_retries=0, timeout=300)


def run_all(fn, items, workers=16):
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def chat(client, i, messages, stream, **extra):
    """(text, finish_reason) of one chat request, streamed or not; sampled on odd `i`."""
    kwargs = dict(model=MODEL, messages=messages, max_tokens=MAX_TOKENS, **extra)
    if i % 2:
        kwargs.update(temperature=0.8, seed=i)
    else:
        kwargs.update(temperature=0)
    if not stream:
        r = client.chat.completions.create(**kwargs)
        return r.choices[0].message.content, r.choices[0].finish_reason
    text, finish = "", None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    return text, finish


def test_json_schema_corpus(client):
    assert len(SCHEMAS) >= 30

    def one(item):
        i, (name, prompt, schema) = item
        rf = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
        text, finish = chat(client, i, [SYSTEM, {"role": "user", "content": prompt}], i % 3 == 0,
                            response_format=rf)
        return name, schema, text, finish

    failures = []
    for name, schema, text, finish in run_all(one, list(enumerate(SCHEMAS))):
        try:
            assert finish == "stop", f"finish_reason {finish}"
            value = json.loads(text)
            jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())
        except Exception as e:  # collect every failure, not just the first
            failures.append(f"{name}: {e!r:.300} in {text!r:.300}")
    assert not failures, "\n".join(failures)


def test_regex_and_choice_corpus(client):
    def one(item):
        i, (kind, name, prompt, spec) = item
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 60}
        body.update({"temperature": 0} if i % 2 == 0 else {"temperature": 0.9, "seed": i})
        if i % 3 == 0:  # vLLM's newer spelling
            body["structured_outputs"] = {kind: spec}
        else:
            body[f"guided_{kind}"] = spec
        r = httpx.post(f"{BASE_URL}/completions", json=body, headers=HEADERS, timeout=300)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        return kind, name, spec, choice["text"], choice["finish_reason"]

    items = [("regex", *x) for x in REGEXES] + [("choice", *x) for x in CHOICES]
    failures = []
    for kind, name, spec, text, finish in run_all(one, list(enumerate(items))):
        ok = re.fullmatch(spec, text) if kind == "regex" else text in spec
        if finish != "stop" or not ok:
            failures.append(f"{kind} {name}: {text!r} ({finish})")
    assert not failures, "\n".join(failures)


def test_json_object_and_lark_grammar(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[SYSTEM, {"role": "user", "content": "Describe a cat."}],
        max_tokens=MAX_TOKENS, temperature=0, response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    grammar = 'start: "The answer is " NUMBER "."\nNUMBER: /[0-9]{1,3}/'
    r = client.completions.create(model=MODEL, prompt="What is 6 times 7?", max_tokens=20,
                                  temperature=0, extra_body={"structured_outputs": {"grammar": grammar}})
    assert re.fullmatch(r"The answer is [0-9]{1,3}\.", r.choices[0].text), r.choices[0].text
    assert r.choices[0].finish_reason == "stop"


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=30)
    country: str = pydantic.Field(max_length=30)
    # An int with bounds has a bounded number of digits; a free float lets a small model run
    # its digits on to max_tokens.
    population_millions: int = pydantic.Field(ge=0, le=1000)


def test_openai_sdk_parse_returns_pydantic_object(client):
    r = client.chat.completions.parse(
        model=MODEL, temperature=0, max_tokens=MAX_TOKENS,
        messages=[{"role": "user", "content": "Describe Paris as a city record."}],
        response_format=City)
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, City), r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"


def test_litellm_response_format():
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}},
              "required": ["answer"], "additionalProperties": False}
    r = litellm.completion(
        model=f"openai/{MODEL}", api_base=BASE_URL, api_key=API_KEY, temperature=0, max_tokens=40,
        messages=[{"role": "user", "content": "Is the Earth round?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}})
    value = json.loads(r.choices[0].message.content)
    jsonschema.validate(value, schema)


def test_bad_grammars_are_400s_while_another_request_streams():
    done = {}

    def stream():
        body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 48, "ignore_eos": True,
                "stream": True}
        text = ""
        with httpx.stream("POST", f"{BASE_URL}/completions", json=body, headers=HEADERS, timeout=300) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    for c in chunk["choices"]:
                        text += c["text"]
                        done["finish"] = c["finish_reason"] or done.get("finish")
        done["text"] = text

    t = threading.Thread(target=stream)
    t.start()
    bad = [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}}},
         "response_format"),
        ({"guided_regex": "a(b"}, "guided_regex"),
        ({"structured_outputs": {"grammar": "start: undefined_rule"}}, "structured_outputs"),
        ({"guided_json": {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}, "guided_json"),
        ({"guided_choice": []}, "guided_choice"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
          "guided_regex": "a+"}, "guided_regex"),
    ]
    for extra, param in bad:
        r = httpx.post(f"{BASE_URL}/completions", headers=HEADERS, timeout=60,
                       json={"model": MODEL, "prompt": "x", "max_tokens": 5, **extra})
        assert r.status_code == 400, (extra, r.text)
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["param"] == param, err
        assert err["message"], err
    t.join(timeout=300)
    assert done.get("finish") == "length", done
    assert done.get("text"), done
