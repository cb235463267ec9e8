"""Frozen encoders in JAX (DINOv2, SigLIP vision and text; the SMART baseline's ResNet-50 and BERT), loaded
from HF or converted directories.

    from smartvlm_jax import towers
    tower = towers.load(path, part="vision")  # HF dir or converted dir
    hidden = tower.encode(tower.preprocess(images))  # last_hidden_state [B, T, D]

The whole API: docs/towers.md.
"""

from smartvlm_jax.towers.registry import FAMILIES, MODEL_TYPES, Family, ModelType, PartSource, Tower
from smartvlm_jax.towers.store import (
    config_hidden_size,
    content_digest,
    create_random,
    hidden_size,
    load,
    save,
    tiny_config,
)
from smartvlm_jax.towers.tokenizer import TextTokenizer, train_sentencepiece, write_wordpiece_vocab

__all__ = [
    "FAMILIES",
    "MODEL_TYPES",
    "Family",
    "ModelType",
    "PartSource",
    "TextTokenizer",
    "Tower",
    "config_hidden_size",
    "content_digest",
    "create_random",
    "hidden_size",
    "load",
    "save",
    "tiny_config",
    "train_sentencepiece",
    "write_wordpiece_vocab",
]
