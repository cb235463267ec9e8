"""A small SMART baseline head config and a batch for it, shared by the baseline head and converter tests."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from smartvlm_jax.reasoner import baseline
from smartvlm_jax.reasoner import config as config_lib

PIDS = [3, 16, 3, 18, 58, 16, 16, 94, 3, 39]  # repeats, several sequence puzzles, 7/25 absent


def small_config(quirks: bool = False, **overrides):
    cfg = config_lib.baseline_config()
    cfg.puzzle_ids = [3, 7, 16, 18, 25, 39, 58, 94]
    cfg.num_classes = [5, 12, 27, 6, 24, 27, 45, 3]
    cfg.repr_size, cfg.h_sz, cfg.text_dim, cfg.vision_dim, cfg.max_qlen = 16, 8, 12, 20, 9
    cfg.reference_quirks = quirks
    cfg.update(overrides)
    return cfg


def batch(cfg, seed: int = 0):
    """Vision features, zero-padded token states (varying lengths), puzzle ids and labels."""
    rng = np.random.default_rng(seed)
    b, length = len(PIDS), cfg.max_qlen
    vision = rng.normal(size=(b, cfg.vision_dim)).astype(np.float32)  # writable: torch.from_numpy shares it
    hidden = rng.normal(size=(b, length, cfg.text_dim)).astype(np.float32)
    mask = np.arange(length)[None, :] < rng.integers(2, length + 1, size=b)[:, None]
    text = np.asarray(baseline.question_states(jnp.asarray(hidden), jnp.asarray(mask)))
    classes = dict(zip(cfg.puzzle_ids, cfg.num_classes, strict=True))
    labels = np.stack([rng.integers(0, classes[p], cfg.num_decode_steps) for p in PIDS]).astype(np.int32)
    return vision, text, np.asarray(PIDS, np.int32), labels
