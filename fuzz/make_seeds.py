#!/usr/bin/env python3
"""Writes the hand-made seeds of fuzz/corpus/<target>/ (seed-*; what the fuzzer found is added
beside them by `scripts/fuzz.sh`). The byte layouts are those of src/fuzzing/*.rs."""

import hashlib
import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

# Routes by their index in flare::server::dry_run::Endpoint::ALL.
CHAT, COMPLETIONS, RESPONSES, MESSAGES, COUNT = range(5)


def write(target, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def request(route, body):
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    write("request", bytes([route]) + body)


msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
for body in [
    {"messages": msgs},
    {"messages": msgs, "max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "n": 2, "seed": 7},
    {"messages": msgs, "logprobs": True, "top_logprobs": 3, "stop": ["x", ""], "min_tokens": 2},
    {"messages": msgs, "tools": [tool], "tool_choice": "required"},
    {"messages": msgs, "tools": [tool], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    {"messages": msgs, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}},
    {"messages": msgs, "response_format": {"type": "json_object"}},
    {"messages": msgs, "guided_regex": "[a-z]+", "max_tokens": 3},
    {"messages": msgs, "guided_choice": ["yes", "no"]},
    {"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, {"role": "tool", "tool_call_id": "c", "content": "ok"}]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]}]},
    {"messages": msgs, "logit_bias": {"5": 100, " 7 ": -100.0}, "max_tokens": 176.0},
    {"messages": msgs, "max_tokens": 0},
    {"messages": msgs, "max_tokens": 9223372036854775807},
    {"messages": [], "model": "nope"},
]:
    request(CHAT, body)
for body in [
    {"prompt": "hello world", "max_tokens": 4},
    {"prompt": ["a", "b"], "n": 3, "echo": True, "logprobs": 2},
    {"prompt": [1, 2, 3]},
    {"prompt": [[5, 6], [7]], "max_tokens": 2},
    {"prompt": [99999999]},
    {"prompt": "", "suffix": "x"},
    {"prompt": "x" * 300},
    {"prompt": "x", "temperature": 1e39, "repetition_penalty": 5e-324},
]:
    request(COMPLETIONS, body)
request(COMPLETIONS, b'{"prompt": "a", "max_tokens": NaN}')
request(COMPLETIONS, b'{"prompt": "\\ud800"}')
request(COMPLETIONS, b'{"prompt": "\xff\xfe"}')
request(CHAT, b"[" * 200 + b"]" * 200)
for body in [
    {"input": "Hi", "instructions": "Be brief.", "max_output_tokens": 5},
    {"input": [{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}, {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{\"a\":1}"}, {"type": "function_call_output", "call_id": "c", "output": "ok"}, {"type": "reasoning"}]},
    {"input": [], "instructions": "x"},
    {"input": "x", "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}], "tool_choice": {"type": "function", "name": "f"}},
    {"input": "x", "text": {"format": {"type": "json_schema", "name": "o", "schema": {"type": "object"}}}},
    {"input": "x", "previous_response_id": "resp_x"},
    {"input": "x", "background": True, "reasoning": {"effort": "high"}},
]:
    request(RESPONSES, body)
for route in (MESSAGES, COUNT):
    for body in [
        {"max_tokens": 5, "system": [{"type": "text", "text": "Be brief."}], "messages": [{"role": "user", "content": "Hi"}]},
        {"max_tokens": 5, "messages": [{"role": "user", "content": "w?"}, {"role": "assistant", "content": [{"type": "thinking", "thinking": "h", "signature": ""}, {"type": "tool_use", "id": "t", "name": "w", "input": {"c": 1}}]}, {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "sun"}]}]}], "tools": [{"name": "w", "input_schema": {"type": "object"}}], "tool_choice": {"type": "any"}},
        {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "thinking": {"type": "enabled", "budget_tokens": 1024}},
        {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
        {"messages": [{"role": "user", "content": "x"}], "top_k": -1, "tools": [{"type": 5, "name": "t"}]},
    ]:
        request(route, body)

# template: head = template (0 ChatML, 1 Hermes) | 0x10 generation prompt | 0x20 tools.
ROLE = {"system": 0, "user": 1, "assistant": 2, "tool": 3, "developer": 4, "ipython": 5, "": 6}


def conv(head, items):
    out = bytes([head])
    parts = []
    for role, text, call in items:
        parts.append(bytes([ROLE[role] | (0x80 if call else 0)]) + text.encode())
    write("template", out + b"\xff".join(parts))


conv(0x10, [("system", "Be brief.", False), ("user", "Hi", False)])
conv(0x00, [("user", "{{ 7*7 }} {% raw %}", False), ("assistant", "ok\n<|im_end|>", False)])
conv(0x11, [("user", "weather?", False), ("assistant", "get_weather", True), ("tool", "sunny", True)])
conv(0x31, [("system", "sys", False), ("user", "Paris?", False)])
conv(0x31, [("ipython", "x", False), ("", "y", False), ("developer", "z", False)])
conv(0x01, [("assistant", "🦀", False)])

# detokenize: head = tokenizer (0 byte-level, 1 SentencePiece, 2 tiny-llama) | 0x80 skip.


def ids(head, seq):
    write("detokenize", bytes([head]) + b"".join(struct.pack("<H", i) for i in seq))


# Byte-level: a byte's id is 3 + byte; 0..2 are control tokens.
crab = [3 + b for b in "🦀 é".encode()]
ids(0x00, crab)
ids(0x80, [1] + crab + [2, 2])
ids(0x00, [3 + 0xF0, 3 + 0x9F, 3 + ord("a"), 3 + 0xE2])
# SentencePiece: byte tokens are 3 + byte, pieces follow at 259.
ids(0x01, [259, 260, 3 + 0xF0, 3 + 0x9F, 3 + 0xA6, 3 + 0x80, 262])
ids(0x81, [1, 259, 2, 0, 270])
ids(0x02, list(range(0, 64)))
ids(0x82, list(range(250, 320)))
