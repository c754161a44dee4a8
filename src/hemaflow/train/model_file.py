"""Reading the finished model file of a trainer (written by
``hemaflow.train.loop.train_and_save``): a dict marked with its kind (``"kind"``, or
``"format"`` for the few-shot files; CycleGAN files carry no mark), read back with the
kind checked and the options rebuilt, with one wording for every refusal."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from hemaflow.train.options import TrainingOptions

Options = TypeVar("Options", bound=TrainingOptions)


def read_model_file(
    path: str | Path,
    kind: str,
    options_type: type[Options],
    *,
    mark: str | None = "kind",
    required: Sequence[str] = (),
    what: str = "",
    hints: Mapping[Any, str] | None = None,
    payload: Any = None,
) -> tuple[dict[str, Any], Options]:
    """The payload of the ``kind`` model file at ``path`` and its options.

    ``mark``: the key that holds the kind (None: the file has none, as CycleGAN's).
    ``required``: keys the payload must have besides ``options``. ``what`` prefixes every
    message (the caller and argument); ``hints`` adds a sentence for a file of another
    known kind. Raises FileNotFoundError for a missing file, ValueError for anything
    else that is not a usable ``kind`` file. ``payload``: the file's contents already read
    (``torch.load`` with ``weights_only=True``) by a caller that looked at its kind first;
    checked as the file would be, not read again."""
    path = Path(path)
    prefix = f"{what}: " if what else ""
    if not path.is_file():
        raise FileNotFoundError(f"{prefix}{kind} model file {path} does not exist")
    if payload is None:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict):
        raise ValueError(
            f"{prefix}{path}: not a {kind} model file (a {type(payload).__name__}, not a dict)"
        )
    if mark is not None and payload.get(mark) != kind:
        found = payload.get(mark)
        hint = f" ({hints[found]})" if hints and found in hints else ""
        raise ValueError(f"{prefix}{path}: not a {kind} model file ({mark} {found!r}){hint}")
    missing = [key for key in ("options", *required) if key not in payload]
    if missing:
        raise ValueError(f"{prefix}{path}: not a {kind} model file (no {', '.join(missing)})")
    try:
        options = options_type.from_dict(payload["options"])
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{prefix}{path}: not a {kind} model file ({exc})") from exc
    return payload, options
