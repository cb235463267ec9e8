"""Small configs and random batches shared by the reasoner tests."""

from __future__ import annotations

import ml_collections
import numpy as np

from smartvlm_jax import reasoner


def small_config(quirks: bool = False, **overrides) -> ml_collections.ConfigDict:
    """A small head over a mix of ordinary and sequence puzzles with varied class counts."""
    cfg = reasoner.default_config()
    cfg.puzzle_ids = [3, 7, 16, 18, 25, 39, 58, 94]
    cfg.num_classes = [5, 12, 27, 6, 24, 27, 45, 3]
    cfg.repr_size = 16
    cfg.h_sz = 32
    cfg.text_dim = 24
    cfg.variant = "siglip"
    cfg.max_qlen = 7
    cfg.reference_quirks = quirks
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def random_batch(cfg, pids: list[int], seed: int = 0):
    """Features (vision width per cfg.variant), puzzle ids and in-range labels as numpy arrays."""
    rng = np.random.default_rng(seed)
    b = len(pids)
    vision = rng.normal(size=(b, reasoner.config.vision_dim(cfg))).astype(np.float32)
    text = rng.normal(size=(b, cfg.text_dim)).astype(np.float32)
    classes = dict(zip(cfg.puzzle_ids, cfg.num_classes, strict=True))
    labels = np.stack([rng.integers(0, classes[p], cfg.num_decode_steps) for p in pids]).astype(np.int32)
    return vision, text, np.asarray(pids, np.int32), labels
