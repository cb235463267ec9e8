"""Image preprocessing equal to the towers' Hugging Face image processors (PIL backend).

Split in two on purpose: :class:`Resizer` is the PIL part (RGB conversion, resize, centre crop) and returns
uint8, so it runs in grain worker processes and is cheap to pickle; :class:`Normalizer` is the arithmetic
part (rescale 1/255, mean/std), written with jnp so it runs inside jit on the accelerator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from smartvlm_jax import images

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BICUBIC = int(Image.Resampling.BICUBIC)
BILINEAR = int(Image.Resampling.BILINEAR)


def to_rgb(image: Image.Image | np.ndarray) -> Image.Image:
    """A PIL RGB image from a PIL image of any mode or an image array (``images.to_rgb8``'s rules: 16-bit
    and float data scaled to 8 bits), transparency composited onto white as transformers'
    ``convert_to_rgb`` does. Raises ValueError for an array of another shape or dtype."""
    return images.to_rgb8(image, alpha="white")


@dataclasses.dataclass(frozen=True)
class Resizer:
    """PIL image or uint8 array (any size/mode) -> uint8 [size, size, 3], as the HF processor's PIL steps.

    ``shortest_edge``: resize so the shorter side is ``resize`` (the longer one
    ``int(resize * long / short)``, HF's rounding), then centre-crop ``size`` x ``size`` (DINOv2).
    Otherwise resize straight to ``size`` x ``size`` (SigLIP). Holds only numbers, so it
    pickles into data-loader workers.
    """

    size: int
    resize: int
    shortest_edge: bool
    resample: int = BICUBIC

    def __post_init__(self) -> None:
        if self.shortest_edge and self.resize < self.size:
            raise ValueError(f"shortest edge {self.resize} is smaller than the crop {self.size}")

    def __call__(self, image: Image.Image | np.ndarray) -> np.ndarray:
        img = to_rgb(image)
        if self.shortest_edge:
            w, h = img.size
            short, long = min(h, w), max(h, w)
            new_long = int(self.resize * long / short)
            new_w, new_h = (self.resize, new_long) if w <= h else (new_long, self.resize)
            img = img.resize((new_w, new_h), resample=self.resample)
            top, left = (new_h - self.size) // 2, (new_w - self.size) // 2
            img = img.crop((left, top, left + self.size, top + self.size))
        else:
            img = img.resize((self.size, self.size), resample=self.resample)
        return np.asarray(img, dtype=np.uint8)


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """uint8 [..., 3] -> float32 (x * rescale - mean) / std; jnp, so it can run inside jit."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    rescale: float = 1 / 255

    def __call__(self, images: jax.Array | np.ndarray) -> jax.Array:
        x = jnp.asarray(images).astype(jnp.float32) * jnp.float32(self.rescale)
        return (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)


def default_processor(kind: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The image-processor settings of a tower when its directory has no ``preprocessor_config.json``.

    DINOv2's released processor resizes the shorter side to 256 and crops 224 regardless of the model's
    ``image_size`` (518); for configs smaller than 224 (tiny test towers) both scale down in proportion.
    SigLIP resizes to its ``image_size`` square with mean = std = 0.5.
    """
    if kind == "resnet":
        # torchvision's ResNet50_Weights.DEFAULT transforms (the SMART baseline): shorter side 232 bilinear,
        # centre crop 224, ImageNet mean/std.
        return {
            "size": {"shortest_edge": 232},
            "crop_size": {"height": 224, "width": 224},
            "do_center_crop": True,
            "resample": BILINEAR,
            "image_mean": list(IMAGENET_MEAN),
            "image_std": list(IMAGENET_STD),
            "rescale_factor": 1 / 255,
        }
    image_size = config["image_size"]
    image_size = int(image_size[0] if isinstance(image_size, (list, tuple)) else image_size)
    if kind == "dinov2":
        crop = min(224, image_size)
        return {
            "size": {"shortest_edge": int(round(crop * 256 / 224))},
            "crop_size": {"height": crop, "width": crop},
            "do_center_crop": True,
            "resample": BICUBIC,
            "image_mean": list(IMAGENET_MEAN),
            "image_std": list(IMAGENET_STD),
            "rescale_factor": 1 / 255,
        }
    return {
        "size": {"height": image_size, "width": image_size},
        "do_center_crop": False,
        "resample": BICUBIC,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "rescale_factor": 1 / 255,
    }


def _triple(value: float | Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else (float(value),) * 3


def from_processor_config(cfg: Mapping[str, Any]) -> tuple[Resizer, Normalizer]:
    """Builds the two halves from HF ``preprocessor_config.json`` fields (``size``, ``crop_size``, ...)."""
    size = cfg.get("size", {})
    if isinstance(size, int):
        size = {"shortest_edge": size}
    resample = int(cfg.get("resample", BICUBIC))
    if "shortest_edge" in size:
        crop = cfg.get("crop_size", {})
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        if not cfg.get("do_center_crop", True) or crop.get("height") != crop.get("width"):
            raise ValueError(f"unsupported processor settings (need a square centre crop): {dict(cfg)}")
        resizer = Resizer(int(crop["height"]), int(size["shortest_edge"]), True, resample)
    elif size.get("height") == size.get("width") and size.get("height"):
        resizer = Resizer(int(size["height"]), int(size["height"]), False, resample)
    else:
        raise ValueError(f"unsupported processor size {size}: need shortest_edge or a square height/width")
    normalizer = Normalizer(
        _triple(cfg.get("image_mean", IMAGENET_MEAN)),
        _triple(cfg.get("image_std", IMAGENET_STD)),
        float(cfg.get("rescale_factor", 1 / 255)),
    )
    return resizer, normalizer
