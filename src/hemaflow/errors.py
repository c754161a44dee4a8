"""Exceptions that name the file or config key at fault and the reason."""


class HemaflowError(Exception):
    """Base class of hemaflow's own errors."""


class ConfigError(HemaflowError):
    """A configuration problem, found before any job runs."""

    def __init__(self, key: str, reason: str):
        self.key = key
        self.reason = reason
        super().__init__(f"config key '{key}': {reason}")


class UnmappedLabelsError(HemaflowError):
    """Labels that the class map does not cover."""

    def __init__(self, unmapped: dict[str, list[str]]):
        self.unmapped = unmapped
        listing = "; ".join(
            f"{dataset}: {', '.join(repr(label) for label in labels)}"
            for dataset, labels in sorted(unmapped.items())
        )
        super().__init__(
            "labels not covered by config key 'class_map' (add them, map them to null, "
            f"or set subgroup.unmapped: drop): {listing}"
        )
