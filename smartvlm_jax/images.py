"""Any decoded image -> the 8-bit RGB picture every stage of the project works on.

One rule for the data pipeline (``smart101.load_image``), the predictor and the towers' resizers:

- PIL modes 1, L, P, RGB, CMYK, YCbCr (and others PIL converts to RGB): ``Image.convert("RGB")``, the
  reference's own call for the release's 8-bit images.
- Transparency (modes LA, La, PA, RGBA, RGBa, or P/L/RGB with a ``transparency`` entry): ``alpha="drop"``
  keeps the colour channels as ``convert("RGB")`` does (the reference's loader); ``alpha="white"``
  composites onto white (transformers' ``convert_to_rgb``, which the towers' HF processors apply).
- High bit depth is scaled to 0..255, never clipped: 16-bit integer images (modes I;16, I;16L, I;16B,
  I;16N; ``uint16`` arrays) as v / 257; mode I (32-bit integers, which PNG/TIFF decoders give for 16-bit
  data) the same when its values lie in 0..65535, else its own min..max onto 0..255; mode F and float
  arrays: values in [0, 1] times 255, else the image's own min..max onto 0..255. Rounding is to nearest.
- numpy arrays: [H, W], [H, W, 1] (grey), [H, W, 3] (RGB) or [H, W, 4] (RGBA) of uint8, uint16, float16,
  float32 or float64. Anything else raises ``ValueError`` naming the shape and dtype.
- EXIF orientation (a phone's portrait JPEG stores its pixels sideways and says so in the Orientation tag)
  is applied, as a viewer shows the picture (``ImageOps.exif_transpose``); an image without the tag, as
  every PNG of the release, is left as it is, bit for bit.

Files and bytes are decoded by :func:`open_image`, which refuses an image of more pixels than
:func:`max_pixels` (``$SMARTVLM_JAX_MAX_IMAGE_PIXELS``, default Pillow's 89,478,485) before decoding it:
Pillow's own guard raises ``DecompressionBombError``, which is no ``OSError`` and names no file, so the
callers that name the bad file by catching ``OSError`` would miss it.
"""

from __future__ import annotations

import io
import os
import re
from typing import IO

import numpy as np
from PIL import ExifTags, Image, ImageOps

ALPHA_POLICIES = ("drop", "white")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
ARRAY_DTYPES = (np.uint8, np.uint16, np.float16, np.float32, np.float64)
MAX_PIXELS_ENV = "SMARTVLM_JAX_MAX_IMAGE_PIXELS"
# Pillow's default Image.MAX_IMAGE_PIXELS (a 1024 x 1024 x 4 x 3 bytes image, its documented reasoning).
DEFAULT_MAX_PIXELS = 89_478_485
# Pillow refuses, whatever our limit, an image of more than twice its own Image.MAX_IMAGE_PIXELS.
_PILLOW_PIXELS = re.compile(r"Image size \((\d+) pixels\)")


class ImageTooLargeError(OSError):
    """An image of more pixels than :func:`max_pixels` allows (a decompression bomb, or a huge image)."""


def max_pixels() -> int | None:
    """The most pixels (width x height) an image may have: ``$SMARTVLM_JAX_MAX_IMAGE_PIXELS`` (an int; 0
    for no limit of ours), else :data:`DEFAULT_MAX_PIXELS`. Read at each call, so a run's environment
    holds in data-loader workers too. Pillow's own hard stop, twice its ``Image.MAX_IMAGE_PIXELS``
    (178,956,970 by default), still applies. Raises ValueError naming the variable for a bad value."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise ValueError(f"${MAX_PIXELS_ENV}={text!r} is not an integer number of pixels") from None
    if value < 0:
        raise ValueError(f"${MAX_PIXELS_ENV}={text!r} is negative (0: no limit)")
    return value or None


def _too_large(pixels: int, size: str, limit: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"the image has {pixels:,} pixels{size}, over the limit of {limit:,} "
        f"(${MAX_PIXELS_ENV}; a decompression bomb?)"
    )


def open_image(source: str | os.PathLike | bytes | IO[bytes]) -> Image.Image:
    """Decode a file, its bytes or a binary file object into a loaded PIL image, EXIF orientation applied.

    Raises :class:`ImageTooLargeError` (an ``OSError``, message with the pixel count and the limit) for an
    image over :func:`max_pixels`, checked on the header before decoding; otherwise Pillow's errors
    (``OSError`` for an unreadable file). The caller names the file.
    """
    limit = max_pixels()
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Image.DecompressionBombError as e:
        found = _PILLOW_PIXELS.search(str(e))
        pixels = int(found.group(1)) if found else 0
        raise _too_large(pixels, "", min(limit or pixels, 2 * (Image.MAX_IMAGE_PIXELS or 0))) from None
    with image:
        w, h = image.size
        if limit is not None and w * h > limit:
            raise _too_large(w * h, f" ({w} x {h})", limit)
        image.load()
        # A new image either way: closing the file releases the decoded one.
        return ImageOps.exif_transpose(image)


def exif_upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF Orientation tag says (the tag removed), or ``image`` itself when it has
    none or 1 (no copy: bitwise unchanged)."""
    if image.getexif().get(ExifTags.Base.Orientation, 1) in (0, 1):
        return image
    return ImageOps.exif_transpose(image)


def to_rgb8(image: Image.Image | np.ndarray, alpha: str = "drop") -> Image.Image:
    """``image`` (a PIL image of any mode, or an array as the module docstring lists) -> PIL RGB (8-bit).

    Raises ValueError for an array of another shape or dtype, or an unknown ``alpha`` policy.
    """
    if alpha not in ALPHA_POLICIES:
        raise ValueError(f"alpha must be one of {ALPHA_POLICIES}, got {alpha!r}")
    if isinstance(image, np.ndarray):
        image = _from_array(image)
    else:  # a PIL image decoded elsewhere (the caller's) may still be sideways
        image = exif_upright(image)
        if image.mode in SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
            image = Image.fromarray(_to_uint8(np.asarray(image), image.mode))
    has_alpha = "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info
    if has_alpha and alpha == "white":
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _from_array(array: np.ndarray) -> Image.Image:
    arr = np.asarray(array)
    shape_ok = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 3, 4))
    if not shape_ok or arr.dtype.type not in ARRAY_DTYPES or arr.size == 0:
        raise ValueError(
            f"image array of shape {arr.shape} and dtype {arr.dtype}: expected [H, W], [H, W, 1], [H, W, 3] "
            f"or [H, W, 4] of {', '.join(np.dtype(d).name for d in ARRAY_DTYPES)}"
        )
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return Image.fromarray(np.ascontiguousarray(_to_uint8(arr, str(arr.dtype))))


def _to_uint8(values: np.ndarray, kind: str) -> np.ndarray:
    """Pixel values of a mode (I;16*, I, F) or array dtype -> uint8 by the module docstring's rule."""
    if values.dtype == np.uint8:
        return values
    v = values.astype(np.float64)
    if kind in (*SIXTEEN_BIT_MODES, "uint16") or (kind == "I" and v.min() >= 0 and v.max() <= 65535):
        scaled = v / 257.0
    elif kind in ("F", "float16", "float32", "float64") and v.min() >= 0.0 and v.max() <= 1.0:
        scaled = v * 255.0
    else:  # out of the usual range: the image's own min..max
        if not np.isfinite(v).all():
            raise ValueError(f"image values of {kind} data are not all finite")
        lo, hi = v.min(), v.max()
        scaled = (v - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(v)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
