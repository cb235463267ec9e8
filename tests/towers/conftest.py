"""Fixtures for the tower tests: random-init HF checkpoints written locally with transformers (torch).

The plain helpers they use live in ``tests.support.hf``; the ``spiece`` fixture is in ``tests/conftest.py``
(other test areas use it too).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from smartvlm_jax import towers
from tests.support.hf import hf_model, sample_images, save_hf


@pytest.fixture(scope="session")
def hf_tiny(tmp_path_factory, spiece) -> dict[str, str]:
    """Tiny HF directories: dinov2, full siglip (with tokenizer), siglip vision-only, siglip text-only."""
    root = tmp_path_factory.mktemp("hf_tiny")
    dirs = {}
    for kind in ("dinov2", "siglip", "siglip_vision_model", "siglip_text_model"):
        tok = spiece if kind in ("siglip", "siglip_text_model") else None
        dirs[kind] = save_hf(hf_model(towers.tiny_config(kind)), os.path.join(root, kind), tok)
    return dirs


@pytest.fixture(scope="session")
def images() -> list[Any]:
    """See :func:`tests.support.hf.sample_images`."""
    return sample_images()
