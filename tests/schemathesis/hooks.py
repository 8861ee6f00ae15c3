"""schemathesis hooks for flare's OpenAPI document (loaded through SCHEMATHESIS_HOOKS by
tests/schemathesis.rs).

The document marks strings that must hold JSON text (a tool call's `arguments`) with the custom
format `json-text`; this teaches schemathesis to generate such strings. It only adds a
generator for a format the document declares: no check is disabled or relaxed.
"""

import json

import schemathesis
from hypothesis import strategies as st

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)

schemathesis.openapi.format("json-text", _json.map(json.dumps))
