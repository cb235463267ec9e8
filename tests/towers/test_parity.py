"""fp32 parity of the JAX towers with transformers' PyTorch models (random weights), and bf16 accuracy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from smartvlm_jax import towers
from smartvlm_jax.towers.backends import onednn
from tests.support.hf import (
    DINOV2_BASE,
    SIGLIP_BASE_TEXT,
    SIGLIP_BASE_VISION,
    hf_model,
    sample_images,
    save_hf,
)

TOL = 1e-4


def torch_vision(model: torch.nn.Module, pixels: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(np.array(pixels)).permute(0, 3, 1, 2))
    return out.last_hidden_state.numpy()


def torch_text(model: torch.nn.Module, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(np.asarray(ids, np.int64))).last_hidden_state.numpy()


def test_tiny_dinov2_matches_transformers(hf_tiny, images):
    tower = towers.load(hf_tiny["dinov2"], part="vision")
    model = hf_model(towers.tiny_config("dinov2")).eval()
    pixels = tower.preprocess(images)
    ours = np.asarray(tower.encode(pixels))
    assert ours.shape == (len(images), 1 + (32 // 8) ** 2, 32)
    np.testing.assert_allclose(ours, torch_vision(model, pixels), atol=TOL, rtol=0)


@pytest.mark.parametrize("side", [40, 56, 27])
def test_tiny_dinov2_interpolates_position_embeddings(hf_tiny, side):
    """Grids other than the stored 4x4 (larger, smaller, with a remainder) resample like HF's bicubic."""
    tower = towers.load(hf_tiny["dinov2"])
    model = hf_model(towers.tiny_config("dinov2"))
    pixels = np.random.default_rng(side).normal(size=(2, side, side, 3)).astype(np.float32)
    ours = np.asarray(tower.apply(tower.params, pixels))
    assert ours.shape[1] == 1 + (side // 8) ** 2
    np.testing.assert_allclose(ours, torch_vision(model, pixels), atol=TOL, rtol=0)


def test_tiny_dinov2_swiglu_no_qkv_bias(tmp_path):
    """The giant variant's SwiGLU MLP (fused weights_in) and qkv_bias=False, through a saved checkpoint."""
    config = {
        **towers.tiny_config("dinov2"),
        "use_swiglu_ffn": True,
        "qkv_bias": False,
        "layerscale_value": 0.5,
    }
    model = hf_model(config, seed=3)
    tower = towers.load(save_hf(model, str(tmp_path / "g")))
    pixels = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(tower.encode(pixels)), torch_vision(model, pixels), atol=TOL, rtol=0
    )


def test_tiny_siglip_vision_and_text_match_transformers(hf_tiny, images):
    model = hf_model(towers.tiny_config("siglip"))
    vision = towers.load(hf_tiny["siglip"], part="vision")
    pixels = vision.preprocess(images)
    hidden = vision.encode(pixels)
    with torch.no_grad():
        ref = model.vision_model(pixel_values=torch.from_numpy(np.array(pixels)).permute(0, 3, 1, 2))
    np.testing.assert_allclose(np.asarray(hidden), ref.last_hidden_state.numpy(), atol=TOL, rtol=0)
    pooled = vision.pooled(vision.params, hidden)
    np.testing.assert_allclose(np.asarray(pooled), ref.pooler_output.numpy(), atol=TOL, rtol=0)

    text = towers.load(hf_tiny["siglip"], part="text")
    ids = text.tokenize(["How many circles are there?", "", "which option is correct " * 20])
    assert ids.shape == (3, 64) and ids.dtype == np.int32
    hidden = text.encode(ids)
    with torch.no_grad():
        ref = model.text_model(input_ids=torch.from_numpy(ids.astype(np.int64)))
    np.testing.assert_allclose(np.asarray(hidden), ref.last_hidden_state.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(
        np.asarray(text.pooled(text.params, hidden)), ref.pooler_output.numpy(), atol=TOL, rtol=0
    )


def test_apply_is_pure_and_jittable(hf_tiny):
    tower = towers.load(hf_tiny["siglip_vision_model"])
    pixels = np.zeros((1, 32, 32, 3), np.float32)
    zeroed = jax.tree.map(lambda a: a * 0, tower.params)
    f = jax.jit(tower.apply, compiler_options=tower.compiler_options)  # as encode compiles it
    assert not np.allclose(f(tower.params, pixels), f(zeroed, pixels))
    np.testing.assert_allclose(f(tower.params, pixels), tower.encode(pixels), atol=1e-6)


def _mean_rel_err(bf16: np.ndarray, fp32: np.ndarray) -> float:
    a, b = bf16.mean(axis=1), fp32.mean(axis=1)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory, spiece):
    root = tmp_path_factory.mktemp("hf_base")
    return {
        "dinov2": (DINOV2_BASE, str(root / "dinov2")),
        "vision": ({"model_type": "siglip_vision_model", **SIGLIP_BASE_VISION}, str(root / "sv")),
        "text": ({"model_type": "siglip_text_model", **SIGLIP_BASE_TEXT}, str(root / "st")),
    }


@pytest.mark.parametrize("which", ["dinov2", "vision", "text"])
@pytest.mark.slow
def test_base_size_parity_and_bf16(base_dirs, which, spiece):
    """Real base configs: fp32 max |diff| <= 1e-4 vs PyTorch; bf16 mean-pooled relative error <= 2e-2; with
    XLA's dots and with the oneDNN kernels."""
    config, path = base_dirs[which]
    model = hf_model(config)
    save_hf(model, path, spiece if which == "text" else None)
    part = "text" if which == "text" else "vision"
    tower = towers.load(path, part=part)
    if which == "text":
        assert tower.hidden_size == 768
        inputs = tower.tokenize(["How many circles are there?", "What is the next number: 3, 5, 7?"])
        ref = torch_text(model, inputs)
    else:
        inputs = tower.preprocess(sample_images()[:3])
        assert inputs.shape == (3, 224, 224, 3)
        ref = torch_vision(model, inputs)
    ours = np.asarray(tower.encode(inputs))
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= TOL
    bf16 = towers.load(path, part=part, dtype="bfloat16")
    low = np.asarray(bf16.encode(inputs))
    assert low.dtype == np.float32
    assert _mean_rel_err(low, ours) <= 2e-2
    if onednn.unavailable_reason() is None:  # the oneDNN kernels (one-device CPU runs), same bounds
        packed = np.asarray(jax.jit(tower.apply)(tower.prepared(pack=True), inputs))
        assert np.abs(packed - ref).max() <= TOL
        low = np.asarray(jax.jit(bf16.apply)(bf16.prepared(pack=True), inputs))
        assert _mean_rel_err(low, ours) <= 2e-2


@pytest.mark.slow
def test_cpu_groups_and_fused_attention_match(hf_tiny, monkeypatch):
    """Running the batch in lax.map groups, and jax.nn.dot_product_attention (the GPU/TPU path, here its
    XLA fallback), give the same last_hidden_state as the CPU formulation on the whole batch."""
    from smartvlm_jax.towers import backends
    from smartvlm_jax.towers.backends import xla

    tower = towers.load(hf_tiny["dinov2"])
    pixels = np.random.default_rng(1).normal(size=(6, 32, 32, 3)).astype(np.float32)
    whole = np.asarray(jax.jit(tower.apply)(tower.params, pixels))
    assert xla.group_size(6, 17) == 6
    monkeypatch.setattr(xla, "CPU_GROUP_ROWS", 40)  # 17 tokens an image -> groups of 2 images
    assert xla.group_size(6, 17) == 2 and xla.group_size(5, 17) == 1 and xla.group_size(6, 100) == 1
    grouped = np.asarray(jax.jit(tower.apply)(tower.params, pixels))
    np.testing.assert_allclose(grouped, whole, atol=1e-5, rtol=0)

    for part in ("vision", "text"):
        t = towers.load(hf_tiny["siglip"], part=part)
        x = pixels if part == "vision" else np.arange(6 * 64).reshape(6, 64) % 500
        ref = np.asarray(t.apply(t.params, x))
        monkeypatch.setattr(xla, "default_impl", lambda: "fused")
        np.testing.assert_allclose(np.asarray(t.apply(t.params, x)), ref, atol=1e-5, rtol=0)
        monkeypatch.setattr(xla, "default_impl", lambda: "cpu")
    with pytest.raises(ValueError, match="attention impl"):
        backends.ops_for(tower.params["encoder"]["layer"], impl="x")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_ready_params_fuse_qkv_and_match_hf_named_params(hf_tiny, tmp_path, dtype):
    """``ready_params`` (q/k/v fused once, outside jit) give what the HF-named ``params`` give, for every
    ViT tower part and SwiGLU DINOv2; ``params`` keep their HF names (what conversion saves)."""
    from smartvlm_jax.towers import vit

    swiglu = towers.create_random(
        str(tmp_path / "swiglu"), "dinov2", {**towers.tiny_config("dinov2"), "use_swiglu_ffn": True}
    )
    rng = np.random.default_rng(2)
    pixels = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)
    ids = rng.integers(0, 500, (3, 64)).astype(np.int32)
    cases = [(swiglu, "vision", pixels), (hf_tiny["dinov2"], "vision", pixels)]
    cases += [(hf_tiny["siglip"], part, x) for part, x in (("vision", pixels), ("text", ids))]
    for path, part, x in cases:
        tower = towers.load(path, part=part, dtype=dtype)
        ready = tower.ready_params
        assert ready is tower.ready_params  # computed once
        layers = (ready["encoder"].get("layer") or ready["encoder"]["layers"]).values()
        hf_layers = (tower.params["encoder"].get("layer") or tower.params["encoder"]["layers"]).values()
        for block, hf_block in zip(layers, hf_layers, strict=True):
            fused = block[vit.FUSED_QKV]["kernel"]
            width = fused.shape[0]
            assert fused.shape == (width, 3 * width) and fused.dtype == jnp.dtype(dtype)
            assert vit.FUSED_QKV not in hf_block
            flat = str(jax.tree_util.tree_structure(block))
            assert not any(name in flat for name in ("query", "q_proj", "'key'", "k_proj", "v_proj"))
        f = jax.jit(tower.apply, compiler_options=tower.compiler_options)
        np.testing.assert_array_equal(np.asarray(f(ready, x)), np.asarray(f(tower.params, x)))
        np.testing.assert_array_equal(np.asarray(tower.encode(x)), np.asarray(f(tower.params, x)))


def test_compiler_options_only_for_float32_vit_towers_on_cpu_xla_path(hf_tiny, monkeypatch):
    """CPU float32 ViT towers whose blocks run through XLA's dots compile them through XLA's oneDNN unless
    loaded with cpu_onednn=False; where the oneDNN kernels run the blocks, and in bf16, XLA's defaults stay
    (a program with XLA's oneDNN fusions cannot enter the persistent compilation cache). Every
    compilation gives the same features within float32 rounding."""
    from smartvlm_jax.towers import backends
    from smartvlm_jax.towers.backends import xla

    kernels = towers.load(hf_tiny["dinov2"])
    assert kernels.compiler_options is None or not kernels.packs_linears
    assert towers.load(hf_tiny["dinov2"], dtype="bfloat16").compiler_options is None
    plain = towers.load(hf_tiny["dinov2"], cpu_onednn=False)
    assert plain.compiler_options is None
    monkeypatch.setattr(backends, "packs_linears", lambda cpu_onednn=True: False)  # e.g. kernels unbuilt
    fp32 = towers.load(hf_tiny["dinov2"])
    assert not fp32.packs_linears and fp32.compiler_options == xla.CPU_FP32_COMPILER_OPTIONS
    pixels = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype(np.float32)
    reference = np.asarray(plain.encode(pixels))
    for tower in (fp32, kernels):
        np.testing.assert_allclose(np.asarray(tower.encode(pixels)), reference, atol=1e-5)
