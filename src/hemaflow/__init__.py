"""hemaflow: multi-lab white-blood-cell images to a clean, balanced, validated classifier."""

__version__ = "0.19.0"
