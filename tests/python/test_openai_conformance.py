"""flare serve as OpenAI clients see it: the official `openai` SDK and `litellm`.

Run by tests/python_conformance.rs against a live `flare serve` (default model, SmolLM2) on
loopback. Environment: FLARE_BASE_URL (http://127.0.0.1:PORT/v1), FLARE_MODEL, FLARE_API_KEY.
Small max_tokens: the model decodes some tens of tokens per second on a CPU.
"""

import os

# Before litellm is imported: never fetch the remote price map, never reach the hub.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402
import litellm  # noqa: E402
import openai  # noqa: E402
import pytest  # noqa: E402

BASE_URL = os.environ["FLARE_BASE_URL"]
MODEL = os.environ["FLARE_MODEL"]
API_KEY = os.environ["FLARE_API_KEY"]
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]

litellm.telemetry = False


@pytest.fixture(scope="module")
def client():
    return openai.OpenAI(base_url=BASE_URL, api_key=API_KEY, max_retries=0, timeout=120)


def tokenize_count(messages):
    root = BASE_URL.removesuffix("/v1")
    r = httpx.post(f"{root}/tokenize", json={"messages": messages}, timeout=30)
    r.raise_for_status()
    return r.json()["count"]


def test_models_list(client):
    ids = [m.id for m in client.models.list().data]
    assert MODEL in ids


def test_chat_answer_and_usage(client):
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=30, temperature=0)
    assert r.object == "chat.completion"
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert "Paris" in choice.message.content
    assert choice.finish_reason == "stop"
    assert r.usage.prompt_tokens == tokenize_count(QUESTION)
    assert 0 < r.usage.completion_tokens <= 30
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens >= 0


def test_stream_agrees_with_non_stream_at_temperature_0(client):
    kwargs = dict(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(
        client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_n2_gives_two_choices(client):
    kwargs = dict(model=MODEL, messages=QUESTION, max_tokens=8, temperature=1.0, seed=7, logprobs=True)
    r = client.chat.completions.create(**kwargs, n=2)
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.message.content for c in r.choices)
    assert r.usage.completion_tokens == sum(len(c.logprobs.content) for c in r.choices)
    # Choice i is seeded with seed + i (as vLLM): choice 0 repeats the single request.
    one = client.chat.completions.create(**kwargs)
    assert one.choices[0].message.content == r.choices[0].message.content


def test_same_seed_same_text(client):
    kwargs = dict(model=MODEL, messages=QUESTION, max_tokens=10, temperature=1.0, top_p=0.95, seed=1234)
    a = client.chat.completions.create(**kwargs).choices[0].message.content
    b = client.chat.completions.create(**kwargs).choices[0].message.content
    assert a == b


def test_logprobs_present(client):
    r = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for lp in content:
        assert lp.logprob <= 0
        assert len(lp.top_logprobs) == 2
        assert lp.top_logprobs[0].logprob >= lp.top_logprobs[1].logprob
    c = client.completions.create(
        model=MODEL, prompt="One, two, three,", max_tokens=4, temperature=0, logprobs=2
    )
    assert len(c.choices[0].logprobs.tokens) == 4
    assert len(c.choices[0].logprobs.token_logprobs) == 4


def test_completions_prompt_forms(client):
    r = client.completions.create(model=MODEL, prompt=["Hello", "One, two,"], max_tokens=3, temperature=0)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.object == "text_completion"
    echo = client.completions.create(model=MODEL, prompt="One, two,", max_tokens=3, temperature=0, echo=True)
    assert echo.choices[0].text == "One, two," + r.choices[1].text
    stream = client.completions.create(model=MODEL, prompt="One, two,", max_tokens=3, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == r.choices[1].text


def test_errors_map_to_sdk_exceptions(client):
    bad = openai.OpenAI(base_url=BASE_URL, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=1)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=QUESTION, max_tokens=1)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=1_000_000)
    assert "maximum context length" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=-1)


def litellm_kwargs(**extra):
    return dict(model=f"openai/{MODEL}", api_base=BASE_URL, api_key=API_KEY, messages=QUESTION, **extra)


def test_litellm_completion_matches_sdk(client):
    sdk = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0)
    r = litellm.completion(**litellm_kwargs(max_tokens=12, temperature=0))
    assert r.choices[0].message.content == sdk.choices[0].message.content
    assert r.usage.prompt_tokens == sdk.usage.prompt_tokens
    assert r.usage.completion_tokens == sdk.usage.completion_tokens


def test_litellm_streaming(client):
    sdk = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0)
    chunks = list(
        litellm.completion(
            **litellm_kwargs(max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True})
        )
    )
    text = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
    assert text == sdk.choices[0].message.content
    usage = [getattr(c, "usage", None) for c in chunks]
    usage = [u for u in usage if u]
    assert usage and usage[-1].completion_tokens == sdk.usage.completion_tokens


def test_litellm_extra_fields(client):
    r = litellm.completion(
        **litellm_kwargs(max_tokens=4, temperature=0.5, top_p=0.9, seed=3, n=2, stop=["\n\n"], user="u1",
                         presence_penalty=0.1, frequency_penalty=0.1, logit_bias={"100": 1.0})
    )
    assert len(r.choices) == 2
