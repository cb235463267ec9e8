"""Picklable stand-ins for the towers' resizer and tokenizer, so data tests don't depend on the towers."""

import zlib

import numpy as np
from PIL import Image

from smartvlm_jax.data import smart101


class Resize32:
    """PIL image (shorter side 224) -> uint8 [32, 32, 3], like a tiny tower's resizer."""

    def __call__(self, image: Image.Image) -> np.ndarray:
        return np.asarray(image.resize((32, 32), Image.BILINEAR), np.uint8)


class HashTokenizer:
    """Lower-cased words -> crc32 ids mod 1000 (0 is padding), padded/truncated to 64, like the text tower."""

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 64), np.int32)
        for i, text in enumerate(texts):
            ids = [1 + zlib.crc32(w.encode()) % 999 for w in text.lower().split()][:64]
            out[i, : len(ids)] = ids
        return out


def is_blue(arr: np.ndarray) -> np.ndarray:
    """Pixels of the synthetic pictures' blue (H, W, 3 int array -> bool mask)."""
    return (arr[..., 2] > 150) & (arr[..., 0] < 100)


def is_red(arr: np.ndarray) -> np.ndarray:
    """Pixels of the synthetic pictures' red."""
    return (arr[..., 0] > 150) & (arr[..., 1] < 100) & (arr[..., 2] < 100)


def count_blobs(path, colour) -> int:
    """Connected regions (4-neighbour) of the pixels that `colour` selects, in the RGB 224 image."""
    mask = colour(np.asarray(smart101.load_image(path)).astype(int))
    seen, count = np.zeros_like(mask), 0
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        count += 1
        stack = [start]
        while stack:
            y, x = stack.pop()
            if 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and mask[y, x] and not seen[y, x]:
                seen[y, x] = True
                stack += [(y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)]
    return count
