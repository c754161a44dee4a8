"""Command-line helpers shared by the bench scripts."""

from __future__ import annotations

import json


def parse_overrides(items: list[str]) -> dict:
    """``["key=value", ...]`` -> dict, values read as JSON when they parse (numbers,
    booleans, lists), as strings otherwise."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out
