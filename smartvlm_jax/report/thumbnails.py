"""Puzzle-image thumbnails for the report pages, as ``data:`` URIs (WebP), so a page opens from disk alone."""

from __future__ import annotations

import base64
import io
import os

from PIL import Image

# Longest side in CSS pixels of a card's image; drawn at 2x for sharp lines on high-density screens.
SIDE = 150
QUALITY = 70  # WebP quality: puzzle diagrams stay legible at ~4 KB each


def data_uri(path: str | os.PathLike, side: int = SIDE * 2, quality: int = QUALITY) -> str:
    """The image at ``path`` shrunk to fit ``side`` x ``side`` pixels (aspect kept), as a WebP data URI.

    ``draft`` lets JPEG decoding skip the full-size image. Raises OSError (Pillow's) for a missing or
    undecodable file.
    """
    with Image.open(path) as im:
        im.draft("RGB", (side, side))
        im = im.convert("RGB")
        im.thumbnail((side, side), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        im.save(out, "WEBP", quality=quality, method=4)
    return "data:image/webp;base64," + base64.b64encode(out.getvalue()).decode("ascii")


class Cache:
    """Thumbnails by image path, so the pages of a sweep's members (same test images) make each once.
    Failures are kept too (as None), with their reason in ``errors``."""

    def __init__(self) -> None:
        self._uris: dict[str, str | None] = {}
        self.errors: dict[str, str] = {}

    def get(self, path: str | os.PathLike) -> str | None:
        """The thumbnail of the image at ``path`` as a WebP data URI (:func:`data_uri`); None when it
        could not be read (the reason in ``errors[path]``)."""
        key = os.fspath(path)
        if key not in self._uris:
            try:
                self._uris[key] = data_uri(key)
            except OSError as e:
                self._uris[key] = None
                self.errors[key] = str(e)
        return self._uris[key]
