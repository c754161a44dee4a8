"""Writing a stage's JSON summary: one form (indented by 2) for every stage."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_json(data: Any, path: str | Path, default: Callable[[Any], Any] = str) -> None:
    """``data`` as JSON at ``path``, indented by 2. ``default`` turns what JSON cannot hold
    (a path, a numpy scalar) into what it can: ``str`` (the default) or ``float`` for
    tables of numbers."""
    with open(path, "w") as handle:
        json.dump(data, handle, indent=2, default=default)
