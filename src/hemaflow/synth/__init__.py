"""Synthetic images for the classes that need them: C-WGAN-GP and few-shot generators."""
