"""--compile_only: a run compiled for a TPU slice that is not here (libtpu's compile-only topologies).

The TPU tests need the ``[tpu-compile]`` extra (libtpu); CI installs it.
"""

import json
import re

import pytest

from configs import smoke
from smartvlm_jax.aot import report, targets
from smartvlm_jax.towers.backends import onednn, xla


def test_targets_parse_and_refuse_with_the_flag():
    t = targets.parse("tpu:v4:2x2x2")
    assert (t.platform, t.chip.name, t.num_devices) == ("tpu", "v4", 8)
    assert targets.parse("gpu:h100:2x8").num_devices == 16
    for bad, says in [
        ("tpu:v9:2x4", "unknown tpu chip 'v9'"),
        ("tpu:v5e", "unknown TPU accelerator type"),
        ("tpu:v4-33", "not a power-of-two slice"),
        ("v5e:2x4", "expected tpu:<chip>:<topology>"),
        ("gpu:h100:8", "bad shape"),
    ]:
        with pytest.raises(ValueError, match=re.escape(says)) as e:
            targets.parse(bad)
        assert "--compile_only=" in str(e.value)


def test_attention_follows_the_target_platform():
    import jax.numpy as jnp

    assert xla.impl_for("cpu", jnp.float32) == "cpu"
    assert xla.impl_for("tpu", jnp.bfloat16) == "fused"
    assert xla.impl_for("gpu", jnp.bfloat16) == "cudnn"
    assert xla.impl_for("gpu", jnp.float32) == "fused"


def test_cpu_custom_call_pattern_catches_the_cpu_kernels():
    for name in (onednn.LINEAR, onednn.ATTENTION, onednn.BLOCK, "__onednn$matmul", "xla_cpu_ynn_fusion"):
        assert report.CPU_CUSTOM_CALL.search(name), name
    for name in ("AllocateBuffer", "AssumeGatherIndicesInBound", "__cudnn$fmhaSoftmax", "tpu_custom_call"):
        assert not report.CPU_CUSTOM_CALL.search(name), name


def fake_compile(batch: int, fixed: int = 100, per: int = 10) -> report.Compiled:
    return report.Compiled(batch, True, 0.0, peak_bytes=fixed + per * batch)


def test_largest_batch_search_finds_the_hbm_edge_within_budget():
    chip = targets.Chip("fake", "tpu", 1000.0, 1.0, 1.0)
    calls = []

    def compile_fn(b):
        calls.append(b)
        return fake_compile(b)

    best, found = report.largest_batch(compile_fn, fake_compile(4), chip, budget=6)
    assert best == 90  # 100 + 10 * 90 = 1000 bytes: the last batch within the HBM
    assert len(found) <= 6 and report.fits(found[90], chip)
    assert any(b > 90 and not report.fits(c, chip) for b, c in found.items())  # bracketed from above
    # from a batch that does not fit, down
    best, found = report.largest_batch(compile_fn, fake_compile(500), chip, budget=6)
    assert best == 90 and len(found) <= 6


def compile_smoke(tmp_path, target: str, **config):
    pytest.importorskip("libtpu")
    from smartvlm_jax import aot

    cfg = smoke.get_config()
    for key, value in config.items():
        setattr(cfg, key, value)
    return aot.compile_run(cfg, tmp_path, target, search_budget=1, print_table=False)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["tpu:v5e:2x4", "tpu:v4:2x2x2"])
def test_smoke_config_compiles_for_tpu(tmp_path, target):
    result = compile_smoke(tmp_path, target)
    assert result["devices"] == 8 and result["attention"] == "fused"
    names = [p["name"] for p in result["programs"]]
    assert names == ["towers", "train_step", "eval_step"]
    for p in result["programs"]:
        assert p["fits"], p
        for field in ("argument_bytes", "peak_bytes", "flops", "bytes_accessed", "roofline_s", "compile_s"):
            assert p[field] > 0, (p["name"], field)
        assert p["cpu_custom_calls"] == [], p["custom_calls"]
    assert result["estimate"]["seconds"]["total"] > 0
    assert result["estimate"]["reference_tower_passes"] > result["estimate"]["tower_passes"]
    written = json.loads((tmp_path / "compile_report.json").read_text())
    assert written["target"] == target
    assert "| towers |" in (tmp_path / "compile_report.md").read_text()


@pytest.mark.slow
def test_a_batch_too_large_is_refused_naming_the_hbm(tmp_path):
    from smartvlm_jax import aot

    pytest.importorskip("libtpu")
    cfg = smoke.get_config()
    cfg.eval_batch_size = 8 * (1 << 21)  # 2M tiny images per chip: ~200 GiB of activations
    with pytest.raises(aot.DoesNotFit) as e:
        aot.compile_run(cfg, tmp_path, "tpu:v5e:2x4", search_budget=2, print_table=False)
    message = str(e.value)
    assert re.search(r"towers needs [\d.]+ GiB per chip on tpu:v5e:2x4 \(HBM [\d.]+ GiB\)", message), message
    found = re.search(r"the largest --config.eval_batch_size that fits is (\d+)", message)
    assert found and 0 < int(found.group(1)) < cfg.eval_batch_size, message
    written = json.loads((tmp_path / "compile_report.json").read_text())
    assert written["refused"] == message


def test_cloud_tpu_accelerator_types_name_their_topology():
    assert targets.parse("tpu:v5litepod-8").text == "tpu:v5e:2x4"
    assert targets.parse("tpu:v4-32").chip.name == "v4" and targets.parse("tpu:v4-32").shape == "2x2x4"
    assert targets.accelerator_topology("v5p-64") == "v5p:2x4x4"
    assert targets.accelerator_topology("v4-8") == "v4:2x2x1"


def test_flash_attention_is_a_tpu_choice_named_by_its_field():
    import jax.numpy as jnp
    import ml_collections

    from smartvlm_jax import features
    from smartvlm_jax.train import checks

    assert xla.impl_for("tpu", jnp.bfloat16, "flash") == "flash"
    assert xla.impl_for("tpu", jnp.bfloat16, "xla") == "fused"
    for platform in ("cpu", "gpu"):
        with pytest.raises(ValueError, match=r"--config.towers.attention='flash' is a TPU kernel"):
            xla.impl_for(platform, jnp.bfloat16, "flash")
    with pytest.raises(ValueError, match=r"--config.towers.attention='splash' is not one of"):
        xla.impl_for("tpu", jnp.bfloat16, "splash")
    cfg = smoke.get_config()
    assert cfg.towers.attention == "xla"
    with pytest.raises(ValueError, match=r"--config.towers.attention='splash' is not 'xla' or 'flash'"):
        checks.check_tower_kernels(ml_collections.ConfigDict({**cfg.towers.to_dict(), "attention": "splash"}))
    with pytest.raises(ValueError, match=r"compile-only so far"):
        features.load_towers(
            ml_collections.ConfigDict({**cfg.towers.to_dict(), "attention": "flash"}), "smarter"
        )


def test_flash_attention_matches_xla_attention_with_padded_tokens():
    """The Pallas kernel (in Pallas's TPU interpret mode, on this CPU) against XLA's attention, at a T that
    is not a multiple of the kernel's block: the padded keys must not be attended to."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental.pallas import tpu as pltpu

    from smartvlm_jax.towers.backends import tpu_flash

    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 130, 2, 64)), jnp.float32) for _ in range(3))
    q = q * 64**-0.5
    want = jax.nn.dot_product_attention(q, k, v, scale=1.0)
    with pltpu.force_tpu_interpret_mode():
        got = jax.jit(tpu_flash.flash_attention)(q, k, v)
    assert tpu_flash.padded_length(130) == 256 and got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=2e-5)


@pytest.mark.slow
def test_flash_attention_compiles_for_tpu_as_a_mosaic_kernel(tmp_path):
    cfg = smoke.get_config()
    cfg.towers.attention = "flash"
    result = compile_smoke(tmp_path, "tpu:v5e:2x4", towers=cfg.towers)
    assert result["attention"] == "flash"
    towers = result["programs"][0]
    assert "tpu_custom_call" in towers["custom_calls"] and towers["cpu_custom_calls"] == []
    assert towers["fits"] and towers["peak_bytes"] > 0 and towers["flops"] > 0


def test_calibration_arithmetic_uses_the_report_roofline():
    from smartvlm_jax.aot import calibrate

    chip = calibrate.host_chip(1e9, 2e9, "fake")
    figures = report.Compiled(4, True, 0.0, flops=2e9, bytes_accessed=1e9)  # 2 s compute, 0.5 s memory
    c = calibrate.calibration(figures, chip, 3.0, "towers")
    assert (c.roofline_s, c.bound, c.ratio) == (2.0, "compute", 1.5)
    assert c.within(2.0) and not c.within(1.2)
    assert calibrate.calibration(figures, chip, 0.5).within(4.0) and not calibrate.calibration(
        figures, chip, 0.5
    ).within(2.0)  # 4x faster than the roofline: the estimate is wrong the other way
    assert c.to_json()["ratio"] == 1.5
    with pytest.raises(ValueError, match="host peaks must be > 0"):
        calibrate.host_chip(0.0, 1e9, "fake")
    with pytest.raises(ValueError, match="measured seconds must be > 0"):
        calibrate.calibration(figures, chip, 0.0)


def test_cpu_target_figures_come_from_the_executable_that_runs(tmp_path):
    """The calibration's path on tiny towers: the CPU target's towers program compiled once, its figures
    read by report.compile_at, and the same executable run on random arguments."""
    import jax
    import numpy as np

    from smartvlm_jax.aot import calibrate, programs

    n = jax.device_count()  # the test session's CPU devices: one example each
    cfg = smoke.get_config()
    cfg.eval_batch_size = cfg.batch_size = n
    plan = programs.plan(cfg, targets.parse("cpu"), tmp_path)
    assert plan.attention == "cpu"
    towers = plan.programs[0]
    figures, executable = calibrate.compile_program(towers, 1)
    assert figures.ok and figures.batch == 1 and figures.flops > 0 and figures.bytes_accessed > 0
    out = jax.block_until_ready(executable(*calibrate.random_args(executable)))
    leaves = jax.tree.leaves(out)
    assert leaves and all(x.shape[0] == n and np.isfinite(np.asarray(x, np.float32)).all() for x in leaves)
    c = calibrate.calibration(figures, calibrate.host_chip(1e11, 1e10, "fake"), 0.01)
    assert c.roofline_s == report.roofline_s(figures, c.chip) > 0


def test_the_docs_table_row_reads_the_report():
    from benchmarks import compile_only

    program = {"peak_bytes": 3 << 29, "per_device_batch": 16, "max_per_device_batch": 96, "compile_s": 30.0}
    result = {
        "target": "tpu:v5e:2x4",
        "programs": [
            {"name": "towers", **program},
            {"name": "train_step", **program, "max_per_device_batch": -1, "compile_s": 5.0},
            {"name": "eval_step", **program, "compile_s": 1.0},
        ],
        "estimate": {
            "extraction_images_per_s": 5000.0,
            "train_steps_per_s": 350.0,
            "seconds": {"total": 22.0},
            "chip_hours": 0.049,
            "tower_passes": 101000,
            "reference_tower_passes": 262600,
        },
    }
    row = compile_only.markdown_row("paper", "xla", result, 120.0)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == compile_only.MARKDOWN_HEAD.splitlines()[0].count("|") - 1
    assert cells[:7] == ["paper", "tpu:v5e:2x4", "xla", "1.50 (16)", "96", "1.50 (16)", "-"]
    assert cells[-3:] == ["101,000 / 262,600", "52.5", "36 / 120"]  # 262,600 passes at 5,000/s
