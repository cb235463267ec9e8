"""Picklable stand-ins for the towers' resizer and tokenizer, so data tests don't depend on the towers."""

import zlib

import numpy as np
from PIL import Image


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
