"""Torch-free helpers that build tiny random towers, for tests and benchmarks (not installed)."""

from __future__ import annotations

import os
import random

from smartvlm_jax.towers.store import create_random, tiny_config
from smartvlm_jax.towers.tokenizer import train_sentencepiece

_WORDS = (
    "how many circles squares triangles are there in the picture which option is correct if a has three "
    "sides what the next number sequence red blue green yellow count left right top bottom of each row "
    "column path from start to end minimum maximum total sum difference time clock hours cm km"
).split()


def sentences(n: int = 400, seed: int = 0) -> list[str]:
    """``n`` puzzle-like sentences (deterministic), enough to train a 500-piece BPE model."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 16))) + "?" for _ in range(n)]


def make_tiny_towers(out_dir: str | os.PathLike, seed: int = 0) -> dict[str, str]:
    """Writes tiny converted DINOv2 and SigLIP (vision + text + tokenizer) towers under ``out_dir``.

    Returns ``{"dinov2": dir, "siglip": dir, "spiece": path}``; each loads with :func:`towers.load`.
    """
    out_dir = os.fspath(out_dir)
    spiece = train_sentencepiece(sentences(seed=seed), os.path.join(out_dir, "tokenizer"), vocab_size=500)
    dinov2_dir = create_random(os.path.join(out_dir, "dinov2"), "dinov2", tiny_config("dinov2"), seed=seed)
    siglip_dir = create_random(
        os.path.join(out_dir, "siglip"), "siglip", tiny_config("siglip"), seed=seed, tokenizer_model=spiece
    )
    return {"dinov2": dinov2_dir, "siglip": siglip_dir, "spiece": spiece}
