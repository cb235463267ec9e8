"""Preprocessing against transformers' PIL image processors; tokenisation against SiglipTokenizer."""

from __future__ import annotations

import pickle

import jax
import numpy as np
import pytest
from transformers import BitImageProcessorPil, SiglipImageProcessorPil, SiglipTokenizer

from smartvlm_jax import towers
from smartvlm_jax.towers import preprocess

DINOV2_PROCESSOR = {
    "size": {"shortest_edge": 256},
    "crop_size": {"height": 224, "width": 224},
    "image_mean": list(preprocess.IMAGENET_MEAN),
    "image_std": list(preprocess.IMAGENET_STD),
}


def _hf_uint8(processor, images, mean, std) -> np.ndarray:
    """HF pixel_values undone back to uint8 levels (before normalisation)."""
    # HF takes grey arrays only with an explicit channel axis; ours also takes [H, W].
    images = [im[..., None] if isinstance(im, np.ndarray) and im.ndim == 2 else im for im in images]
    pixels = processor(images=images, return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    return pixels * np.asarray(std) + np.asarray(mean), pixels


@pytest.mark.parametrize("kind", ["dinov2", "siglip"])
def test_preprocess_matches_hf_processor(kind, images):
    if kind == "dinov2":
        hf = BitImageProcessorPil(**DINOV2_PROCESSOR)
        resizer, normalize = preprocess.from_processor_config(
            preprocess.default_processor("dinov2", {"image_size": 518})
        )
    else:
        hf = SiglipImageProcessorPil()
        resizer, normalize = preprocess.from_processor_config(
            preprocess.default_processor("siglip", {"image_size": 224})
        )
    assert hf.backend == "pil"
    unit, hf_pixels = _hf_uint8(hf, images, normalize.mean, normalize.std)
    ours_u8 = np.stack([resizer(im) for im in images])
    assert ours_u8.dtype == np.uint8 and ours_u8.shape == (len(images), 224, 224, 3)
    assert np.abs(ours_u8.astype(np.float64) - unit * 255).max() <= 1.0 + 1e-3
    ours = np.asarray(jax.jit(normalize)(ours_u8))
    step = 1 / 255 / min(normalize.std)
    assert np.abs(ours - hf_pixels).max() <= step + 1e-5


def test_resizer_and_normalizer_pickle(images):
    r, n = preprocess.from_processor_config(preprocess.default_processor("dinov2", {"image_size": 518}))
    r2, n2 = pickle.loads(pickle.dumps((r, n)))
    np.testing.assert_array_equal(r2(images[1]), r(images[1]))
    assert (r2, n2) == (r, n)


def test_tokenizer_ids_match_siglip_tokenizer(spiece, hf_tiny):
    texts = [
        "How many Circles?",
        "",
        "  spaces   and\ttabs ",
        "Punctuation!!! (a), b; c.",
        "zebra Ωmega",
        "ends with </s>",
        "</s> starts",
        "mid <unk> token",
        "x" * 300,
        "the sum " * 80,
        "a\u2581b",
        "Café NAÏVE",
        "What is 3+4?",
    ]
    hf = SiglipTokenizer(vocab_file=spiece)
    ref = np.asarray(hf(texts, padding="max_length", max_length=64, truncation=True)["input_ids"])
    text = towers.load(hf_tiny["siglip"], part="text")
    np.testing.assert_array_equal(text.tokenize(texts), ref)
    restored = pickle.loads(pickle.dumps(text.tokenizer))
    np.testing.assert_array_equal(restored(texts), ref)
    assert text.tokenizer(texts).dtype == np.int32


def test_train_sentencepiece_special_ids(spiece):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=spiece)
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    assert 100 < sp.get_piece_size() <= 500
