"""Shared by the Responses and Messages SDK tests (run by tests/python_apis.rs)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BASE = os.environ["FLARE_BASE"]  # http://127.0.0.1:PORT (no /v1)
MODEL = os.environ["FLARE_MODEL"]
API_KEY = os.environ["FLARE_API_KEY"]

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
