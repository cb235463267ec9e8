"""The oneDNN tower kernels (XLA FFI custom calls): built here, equal to XLA's dots and attention, and
the packed towers equal to the unpacked ones. Parity with PyTorch at base size is in test_parity.py."""

from __future__ import annotations

import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smartvlm_jax import towers
from smartvlm_jax.towers import vit
from smartvlm_jax.towers.backends import onednn, xla

if platform.system() != "Linux" or platform.machine() != "x86_64":
    pytest.skip("the oneDNN kernels are built for x86-64 Linux only", allow_module_level=True)


def test_kernels_build_and_register_here():
    """requirements.txt installs the onednn wheels, so on x86-64 Linux the kernels must build."""
    assert onednn.unavailable_reason() is None


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("act", [None, "gelu_erf", "gelu_tanh"])
def test_linear_matches_xla(dtype, act):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 7, 48)), dtype)
    kernel = jnp.asarray(rng.normal(size=(48, 40)) * 0.2, dtype)
    bias = jnp.asarray(rng.normal(size=(40,)), jnp.float32)
    packed = onednn.pack(kernel)
    assert packed.dtype == kernel.dtype and packed.ndim == 1
    fns = {None: lambda h: h, "gelu_erf": vit.gelu_erf, "gelu_tanh": vit.gelu_tanh}
    ref = fns[act](jnp.dot(x, kernel, preferred_element_type=jnp.float32) + bias)
    f32 = jax.jit(lambda x, w: onednn.linear(x, w, bias, act))(x, packed)
    assert f32.shape == (2, 7, 40) and f32.dtype == jnp.float32
    assert _rel(f32, ref) < 1e-5
    if dtype == "bfloat16":
        low = jax.jit(lambda x, w: onednn.linear(x, w, bias, act, jnp.bfloat16))(x, packed)
        assert low.dtype == jnp.bfloat16 and _rel(low, ref) < 1e-2  # rounding of the output only
    else:
        with pytest.raises(ValueError, match="out_dtype must be float32 or the kernel's float32"):
            onednn.linear(x, packed, bias, act, jnp.bfloat16)


def test_linear_and_pack_reject_bad_input():
    packed = onednn.pack(np.ones((16, 8), np.float32))
    with pytest.raises(Exception, match=r"packed kernel holds \d+ bytes, a \[24, 8\] kernel"):
        jax.jit(lambda x: onednn.linear(x, packed, jnp.zeros(8)))(jnp.ones((3, 24))).block_until_ready()
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        onednn.pack(np.ones((4, 4), np.float16))
    with pytest.raises(ValueError, match="act must be one of"):
        onednn.linear(jnp.ones((3, 16)), packed, jnp.zeros(8), "relu")


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("bfloat16", 2e-2)])
def test_attention_matches_xla(dtype, tol):
    b, t, heads, dh = 3, 17, 2, 16
    qkv = jnp.asarray(np.random.default_rng(1).normal(size=(b, t, 3 * heads * dh)) * 2, dtype)
    ours = jax.jit(lambda a: onednn.attention(a, heads, dh**-0.5))(qkv)
    assert ours.shape == (b, t, heads * dh) and ours.dtype == qkv.dtype
    x = qkv.astype(jnp.float32).reshape(b, t, 3, heads, dh)
    x = jnp.transpose(x * jnp.array([dh**-0.5, 1, 1])[:, None, None], (2, 0, 3, 1, 4)).astype(dtype)
    ref = jnp.transpose(xla.attend_heads_major(x[0], x[1], x[2]), (0, 2, 1, 3)).reshape(b, t, -1)
    assert _rel(ours, ref) < tol
    with pytest.raises(ValueError, match="not 3 x 5 heads"):
        onednn.attention(qkv, 5, 1.0)


def _cases(hf_tiny, tmp_path):
    swiglu = towers.create_random(
        str(tmp_path / "swiglu"),
        "dinov2",
        {**towers.tiny_config("dinov2"), "use_swiglu_ffn": True, "qkv_bias": False},
    )
    rng = np.random.default_rng(2)
    pixels = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)
    ids = rng.integers(0, 500, (3, 64)).astype(np.int32)
    cases = [(swiglu, "vision", pixels), (hf_tiny["dinov2"], "vision", pixels)]
    return cases + [(hf_tiny["siglip"], part, x) for part, x in (("vision", pixels), ("text", ids))]


@pytest.mark.slow
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("bfloat16", 3e-2)])
def test_packed_towers_match_xla_towers(hf_tiny, tmp_path, dtype, tol):
    """Every ViT tower part (and SwiGLU DINOv2 without q/k/v biases): the forward on packed params (oneDNN
    linears and attention) gives what it gives on XLA's dots; packed blocks hold no plain kernels."""
    for path, part, x in _cases(hf_tiny, tmp_path):
        tower = towers.load(path, part=part, dtype=dtype)
        packed, plain = tower.prepared(pack=True), tower.prepared(pack=False)
        layers = packed["encoder"].get("layer") or packed["encoder"]["layers"]
        for block in layers.values():
            assert block[vit.FUSED_QKV]["packed"].dtype == jnp.dtype(dtype)
            assert "kernel" not in str(jax.tree_util.tree_structure(block))
        f = jax.jit(tower.apply)
        assert _rel(f(packed, x), f(plain, x)) < tol, (path, part)


def test_packs_linears_on_one_cpu_device_only(hf_tiny, monkeypatch):
    """The tests' 8 simulated devices keep XLA's dots (a custom call would run replicated); with one
    device ``ready_params`` are packed and ``encode`` runs the kernels; ``cpu_onednn=False`` opts out."""
    pixels = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype(np.float32)
    assert jax.device_count() > 1 and not towers.load(hf_tiny["dinov2"]).packs_linears
    monkeypatch.setattr(jax, "device_count", lambda *args: 1)
    tower = towers.load(hf_tiny["dinov2"])
    assert tower.packs_linears and "packed" in tower.ready_params["encoder"]["layer"]["0"][vit.FUSED_QKV]
    ref = jax.jit(tower.apply)(tower.prepared(pack=False), pixels)
    np.testing.assert_allclose(np.asarray(tower.encode(pixels)), np.asarray(ref), atol=1e-5)
    assert not towers.load(hf_tiny["dinov2"], cpu_onednn=False).packs_linears
    assert towers.load(hf_tiny["siglip"], part="text").packs_linears


def test_missing_onednn_or_compiler_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(onednn, "_prefixes", lambda: [tmp_path])
    with pytest.raises(onednn.UnavailableError, match="oneDNN not found.*onednn-cpu-gomp"):
        onednn._find_onednn()
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("SMARTVLM_JAX_CACHE", str(tmp_path / "cache"))
    with pytest.raises(onednn.UnavailableError, match="no-such-compiler.*not found"):
        onednn._build(tmp_path, tmp_path)
