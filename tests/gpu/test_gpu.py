"""Checks that need a GPU (``pytest -m gpu``; benchmarks/gpu/run.sh runs them with JAX_PLATFORMS=cuda).

Skipped wherever JAX's default backend is not a GPU, which is every CI run: they exist for the lent
accelerator, where the CPU suite cannot reach these code paths (cuDNN attention, towers on a GPU mesh).
"""

from __future__ import annotations

import re

import jax
import ml_collections
import numpy as np
import pytest

from smartvlm_jax import features, parallel, towers
from smartvlm_jax.towers.backends import xla
from tests.support import tiny_towers

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (JAX default backend)"),
]

# Base-width DINOv2 (768 wide, 12 heads of 64, 224 px -> 257 tokens) with 2 layers: the attention shapes
# of the real tower at a fraction of its compile time.
BASE_WIDTH_DINOV2 = {
    **towers.tiny_config("dinov2"),
    "hidden_size": 768,
    "num_attention_heads": 12,
    "image_size": 224,
    "patch_size": 14,
}


def _mean_rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean() / np.abs(b).mean())


@pytest.fixture(scope="module")
def base_width_dinov2(tmp_path_factory):
    return towers.create_random(str(tmp_path_factory.mktemp("dinov2")), "dinov2", BASE_WIDTH_DINOV2, seed=0)


def test_bf16_tower_attention_runs_through_cudnn_and_matches_cpu_formulation(base_width_dinov2, monkeypatch):
    """On a CUDA GPU the bf16 towers' attention compiles to cuDNN's fused kernel, and its features match
    the CPU formulation (heads-major einsums, float32 softmax) run on the same GPU."""
    tower = towers.load(base_width_dinov2, dtype="bfloat16")
    pixels = np.random.default_rng(0).normal(size=(4, 224, 224, 3)).astype(np.float32)
    assert xla.default_impl() == "fused"
    fused = jax.jit(tower.apply)
    assert xla.cudnn_attention_compiles((4, 257, 12, 64), (4, 257, 12, 64), "bfloat16") == ""
    hlo = fused.lower(tower.ready_params, pixels).compile().as_text()
    targets = set(re.findall(r'custom_call_target="([^"]+)"', hlo)) | set(re.findall(r"__cudnn\$\w+", hlo))
    print("cuDNN calls in the compiled tower:", sorted(t for t in targets if "cudnn" in t.lower()))
    assert any("cudnn" in t.lower() and ("fmha" in t.lower() or "fusion" in t.lower()) for t in targets)
    out = np.asarray(fused(tower.ready_params, pixels))
    monkeypatch.setattr(xla, "default_impl", lambda: "cpu")
    ref = np.asarray(jax.jit(tower.apply)(tower.ready_params, pixels))
    assert np.isfinite(out).all()
    assert _mean_rel_err(out, ref) <= 2e-2
    # float32 takes XLA's formulation (cuDNN's kernels are half precision); at full matmul precision it
    # equals the CPU formulation to float32 rounding.
    fp32 = towers.load(base_width_dinov2, dtype="float32")
    with jax.default_matmul_precision("float32"):
        monkeypatch.setattr(xla, "default_impl", lambda: "fused")
        a = np.asarray(jax.jit(fp32.apply)(fp32.ready_params, pixels))
        monkeypatch.setattr(xla, "default_impl", lambda: "cpu")
        b = np.asarray(jax.jit(fp32.apply)(fp32.ready_params, pixels))
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)


def test_fsdp_sharded_towers_on_the_gpu_mesh_equal_replicated(tmp_path):
    """Tower parameters placed by the FSDP rules on the real devices' mesh give the features of
    replicated ones (the training path with ``config.towers.fsdp=True``)."""
    dirs = tiny_towers.make_tiny_towers(tmp_path)
    cfg = ml_collections.ConfigDict({"dinov2": dirs["dinov2"], "siglip": dirs["siglip"], "dtype": "bfloat16"})
    frozen = features.load_towers(cfg, "fused")
    mesh = parallel.make_mesh(fsdp=len(jax.devices()))
    params = frozen.params()
    sharded = jax.device_put(params, parallel.shardings_for(params, mesh, parallel.TOWER_FSDP_RULES))
    replicated = jax.device_put(params, parallel.shardings_for(params, mesh))
    specs = {str(s.spec) for s in jax.tree.leaves(jax.tree.map(lambda x: x.sharding, sharded))}
    assert any("fsdp" in s for s in specs), specs
    rng = np.random.default_rng(1)
    n = 2 * len(jax.devices())
    batch = {f"image/{k}": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for k in frozen.names}
    batch["question_ids"] = rng.integers(0, 500, (n, 64)).astype(np.int32)
    batch = jax.device_put(batch, parallel.batch_sharding(mesh))
    got = frozen.jitted_features(sharded, batch)
    want = frozen.jitted_features(replicated, batch)
    assert all(d.platform == "gpu" for d in got[0].devices())
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5, rtol=0)
