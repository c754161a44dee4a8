"""Stain normalization: map the colours of one lab's images onto another's."""
