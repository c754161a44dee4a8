"""The options object of a trainer: a frozen dataclass built from a config section
(``{"preset": name, **overrides}``), checked field by field with messages that name the
option, stored as a plain dict in checkpoints and models.

A subclass declares its fields with defaults (the papers' values), sets ``KIND`` (the
name used in messages), fills ``PRESETS`` after the class body, and may restrict fields
through ``CHOICES`` / ``POSITIVE`` / ``NON_NEGATIVE`` / ``FRACTIONS`` or override
``check_field`` for anything else."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="TrainingOptions")

_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def coerce(value: Any, annotation: str) -> Any:
    """YAML reads ``2e-4`` as a string and ``10`` as an int: accept both for floats."""
    if annotation == "float" and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    return value


@dataclasses.dataclass(frozen=True)
class TrainingOptions:
    KIND: ClassVar[str] = "training"
    PRESETS: ClassVar[dict[str, Any]] = {}
    DEFAULT_PRESET: ClassVar[str] = "cpu"
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {}
    POSITIVE: ClassVar[frozenset[str]] = frozenset()
    NON_NEGATIVE: ClassVar[frozenset[str]] = frozenset()
    FRACTIONS: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            problem = self._type_problem(value, str(field.type)) or self.check_field(
                field.name, value
            )
            if problem:
                raise ValueError(f"{self.KIND} option '{field.name}': {problem}, got {value!r}")

    @staticmethod
    def _type_problem(value: Any, annotation: str) -> str | None:
        expected = _TYPES.get(annotation)
        if expected is None:
            return None
        if (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected):
            return f"expected {annotation}"
        return None

    def check_field(self, name: str, value: Any) -> str | None:
        """The problem with one field's value, or None."""
        if name in self.CHOICES and value not in self.CHOICES[name]:
            return f"must be one of {', '.join(self.CHOICES[name])}"
        if name in self.POSITIVE and value <= 0:
            return "must be > 0"
        if name in self.NON_NEGATIVE and value < 0:
            return "must be >= 0"
        if name in self.FRACTIONS and not 0.0 <= value < 1.0:
            return "must be in [0, 1)"
        return None

    @classmethod
    def from_config(cls: type[T], section: Mapping[str, Any] | None) -> T:
        """``{"preset": name, **overrides}``; the preset defaults to ``DEFAULT_PRESET``.
        Unknown keys raise ValueError naming the key."""
        section = dict(section or {})
        preset = section.pop("preset", cls.DEFAULT_PRESET)
        if preset not in cls.PRESETS:
            raise ValueError(
                f"{cls.KIND} option 'preset': {preset!r} is not one of {', '.join(cls.PRESETS)}"
            )
        return cls.PRESETS[preset].with_overrides(section)

    @classmethod
    def from_dict(cls: type[T], values: Mapping[str, Any]) -> T:
        """From ``asdict(options)`` (as stored in checkpoints and models); missing keys take
        the defaults, unknown keys raise ValueError."""
        return cls().with_overrides(values)

    def with_overrides(self: T, overrides: Mapping[str, Any]) -> T:
        types = {field.name: str(field.type) for field in dataclasses.fields(self)}
        values = {}
        for key, value in overrides.items():
            if key not in types:
                raise ValueError(
                    f"{self.KIND} option '{key}': unknown option "
                    f"(known: preset, {', '.join(types)})"
                )
            values[key] = coerce(value, types[key])
        return dataclasses.replace(self, **values)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
