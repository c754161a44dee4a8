"""Options for smoke runs: the smallest networks and schedules that take every trainer
through every step (training, checkpoint, resume, model file) in seconds. They learn
nothing; tests and the benches' ``--quick`` runs use them to check the plumbing on real
images. Each is a config section: ``{"preset": ..., **overrides}``."""

from __future__ import annotations

from typing import Any

# the white-blood-cell classifier (hemaflow.classify): a two-stage SENet-GE at 32 px
CLASSIFIER: dict[str, Any] = {
    "preset": "small",
    "image_size": 32,
    "stage_blocks": [1, 1],
    "widths": [16, 32],
    "cardinality": 4,
    "base_width": 2,
    "stem_width": 8,
    "batch_size": 8,
    "iterations": 6,
    "warmup_iterations": 1,
    "eval_every": 3,
    "checkpoint_every": 3,
    "log_every": 1,
}
# the real-data classifier, the C-WGAN-GP's third player (hemaflow.synth.real_classifier)
REAL_CLASSIFIER: dict[str, Any] = {
    "preset": "cpu",
    "image_size": 32,
    "width": 8,
    "blocks_1": 1,
    "blocks_2": 1,
    "blocks_3": 1,
    "batch_size": 8,
    "iterations": 4,
    "checkpoint_every": 2,
    "log_every": 1,
}
CWGAN: dict[str, Any] = {
    "preset": "cpu",
    "image_size": 32,
    "width": 8,
    "z_dim": 16,
    "embed_dim": 4,
    "g_blocks_low": 1,
    "g_blocks_high": 1,
    "d_blocks_1": 1,
    "d_blocks_2": 1,
    "d_blocks_3": 0,
    "n_critic": 2,
    "batch_size": 8,
    "iterations": 4,
    "checkpoint_every": 2,
    "log_every": 1,
}
FEWSHOT: dict[str, Any] = {
    "preset": "cpu",
    "image_size": 32,
    "width": 4,
    "code_dim": 8,
    "noise_dim": 8,
    "shots": 3,
    "batch_size": 4,
    "meta_iterations": 3,
    "inner_steps": 2,
    "adapt_iterations": 2,
    "checkpoint_every": 2,
    "log_every": 1,
}
