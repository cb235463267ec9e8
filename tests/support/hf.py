"""Random-init Hugging Face checkpoints written locally with transformers (PyTorch), and sample images.

Shared by the tower tests, the input-check tests and benchmarks (``DINOV2_BASE``); not installed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from smartvlm_jax.towers.released import RELEASED

DINOV2_BASE = RELEASED["facebook/dinov2-base"]
SIGLIP_BASE_VISION: dict[str, Any] = {}  # siglip-base-patch16-224 == SiglipVisionConfig defaults
SIGLIP_BASE_TEXT: dict[str, Any] = {}  # == SiglipTextConfig defaults


def hf_config_objects(config: dict[str, Any]):
    """transformers config object for one of our HF-style config dicts."""
    import transformers

    mt = config["model_type"]
    kwargs = {k: v for k, v in config.items() if k != "model_type"}
    if mt == "dinov2":
        return transformers.Dinov2Config(**kwargs)
    if mt == "siglip":
        return transformers.SiglipConfig(**kwargs)
    if mt == "siglip_vision_model":
        return transformers.SiglipVisionConfig(**kwargs)
    if mt == "siglip_text_model":
        return transformers.SiglipTextConfig(**kwargs)
    raise ValueError(mt)


def hf_model(config: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    """A random-init transformers model (eval mode) for one of our HF-style configs."""
    import transformers

    classes = {
        "dinov2": transformers.Dinov2Model,
        "siglip": transformers.SiglipModel,
        "siglip_vision_model": transformers.SiglipVisionModel,
        "siglip_text_model": transformers.SiglipTextModel,
    }
    torch.manual_seed(seed)
    model = classes[config["model_type"]](hf_config_objects(config)).eval()
    # HF initialises LayerNorms to identity and biases to zero; randomise them so parity tests see them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "lambda1" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def save_hf(model: torch.nn.Module, path: str, spiece: str | None = None, **save_kwargs: Any) -> str:
    """``save_pretrained`` plus, for SigLIP text, the tokenizer (``SiglipTokenizer`` on ``spiece``)."""
    model.save_pretrained(path, **save_kwargs)
    if spiece is not None:
        from transformers import SiglipTokenizer

        SiglipTokenizer(vocab_file=spiece).save_pretrained(path)
    return path


def sample_images(seed: int = 0) -> list[Any]:
    """Images of several sizes and modes (RGB, RGBA, L, P with transparency, uint8 arrays), smooth + noise."""
    rng = np.random.default_rng(seed)

    def img(h: int, w: int, c: int) -> np.ndarray:
        yy, xx = np.mgrid[0:h, 0:w]
        base = 127 + 100 * np.sin(xx[..., None] / 7.0 + yy[..., None] / 11.0 + np.arange(c))
        return np.clip(base + rng.normal(0, 20, (h, w, c)), 0, 255).astype(np.uint8)

    rgba = img(224, 300, 4)
    rgba[..., 3] = np.where(rng.random((224, 300)) > 0.3, 255, rng.integers(0, 255, (224, 300)))
    pal = Image.fromarray(img(250, 224, 3)).convert("P", palette=Image.Palette.ADAPTIVE)
    pal.info["transparency"] = 0
    return [
        Image.fromarray(img(224, 224, 3)),
        Image.fromarray(rgba, "RGBA"),
        Image.fromarray(img(300, 224, 1)[..., 0], "L"),
        pal,
        img(224, 331, 3),  # uint8 array, non-square
        img(97, 60, 1)[..., 0],  # small grey array
    ]
