"""--compile_only: a run compiled for a TPU slice or GPU hosts that are not here (libtpu's compile-only
topologies; the CUDA plugin's, on the package's GPU target descriptions).

The TPU tests need the ``[tpu-compile]`` extra (libtpu), the GPU test the ``[gpu-compile]`` extra. Installed
in the test interpreter, the GPU extra makes every process's ``import jax`` print C++ INFO lines when no GPU
driver is there ("cudart_stub.cc:31] Could not find cuda drivers"), which the plain-console tests refuse. So
CI installs it into a folder of its own (``pip install --target``) named by ``SMARTVLM_GPU_COMPILE_PATH``,
and the GPU test reruns itself in a pytest whose ``PYTHONPATH`` starts with that folder (docs/gpu.md).
"""

import json
import os
import re
import subprocess
import sys

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
        ("tpu:v5e:2x4x4", "v5e slices are 2-D tori (2x4 or 16x16), not '2x4x4'"),  # libtpu: CHECK, abort
        ("tpu:v4:2x4", "v4 slices are 3-D tori (2x2x2 or 2x4x4), not '2x4'"),
    ]:
        with pytest.raises(ValueError, match=re.escape(says)) as e:
            targets.parse(bad)
        assert "--compile_only=" in str(e.value)


def test_a_topology_libtpu_cannot_build_names_the_flag():
    pytest.importorskip("libtpu")
    with pytest.raises(ValueError, match=r"^--compile_only=tpu:v5e:3x3: libtpu refuses topology v5e:3x3: \S"):
        targets.parse("tpu:v5e:3x3").devices()


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


def test_a_crashed_compile_bounds_the_search_from_above():
    """A compile that crashed is a batch that did not fit: the search bisects below it, and what it returns
    is the largest batch that fitted (here the true edge, 90, lies past the crash at 40)."""
    chip = targets.Chip("fake", "tpu", 1000.0, 1.0, 1.0)

    def compile_fn(b):
        if b >= 40:
            return report.Compiled(b, False, 0.0, error=f"libtpu crashed (SIGSEGV) at {b}", crashed="SIGSEGV")
        return fake_compile(b)

    best, found = report.largest_batch(compile_fn, fake_compile(16), chip, budget=6)
    assert 16 <= best < 40 and report.fits(found[best], chip)
    assert all(report.fits(found[b], chip) for b in found if b < 40)
    assert found[32].ok and found[min(b for b in found if b >= 40)].crashed == "SIGSEGV"


def test_a_compiler_crash_in_the_search_is_reported_not_fatal(tmp_path, monkeypatch):
    """The search's compiles run in child processes (``isolate``, the default on TPU targets): a child
    that dies of SIGSEGV (a real one, raised by the child at the batch the test names) is reported in the
    table and the JSON with the largest batch that fitted, and the report is still written. The compiles
    at the run's batch, in this process, are replaced by fixed figures: the smoke train step alone takes
    20 to 40 s to compile for 8 CPU devices here, and the children, not those compiles, are under test."""
    from smartvlm_jax import aot
    from smartvlm_jax.aot import child

    n = 8  # the test session's CPU devices
    cfg = smoke.get_config()
    cfg.batch_size = cfg.eval_batch_size = 2 * n  # every program at 2 per device; the search tries 4 first
    monkeypatch.setenv(child.CRASH_AT_ENV, "4")
    in_process = []

    def compile_at(program, batch, *args, **kwargs):
        in_process.append((program.name, batch))
        return report.Compiled(batch, True, 0.1, peak_bytes=1000 + batch, flops=1e6, bytes_accessed=1e6)

    monkeypatch.setattr(report, "compile_at", compile_at)
    result = aot.compile_run(cfg, tmp_path, "cpu", search_budget=2, print_table=False, isolate=True)
    assert result["devices"] == n
    assert in_process == [("towers", 2), ("train_step", 2), ("eval_step", 2)]  # batch 4: in the children
    for p in result["programs"]:
        assert p["fits"] and p["max_per_device_batch"] == 2, p
        seconds = p["search"][1]["compile_s"]  # the crashed child's own
        assert p["search"] == [
            {"batch": 2, "ok": True, "peak_bytes": 1002, "crashed": "", "compile_s": 0.1},
            {"batch": 4, "ok": False, "peak_bytes": 0, "crashed": "SIGSEGV", "compile_s": seconds},
        ]
        assert 0 < seconds < 60
        assert p["search_crash"] == (
            f"the XLA compiler crashed (SIGSEGV) compiling {p['name']} at batch 4 per chip; "
            "largest that fitted: 2"
        )
    assert json.loads((tmp_path / "compile_report.json").read_text()) == result
    text = (tmp_path / "compile_report.md").read_text()
    assert "compiler crashed in the largest-batch search (max batch/chip is a floor):" in text
    assert "towers: the XLA compiler crashed (SIGSEGV) compiling towers at batch 4 per chip" in text
    assert child.compiler_name("tpu:v6e:2x4") == "libtpu"


def test_a_child_that_fails_without_a_signal_raises_with_its_last_words(tmp_path):
    from smartvlm_jax.aot import child

    run = child.Run(smoke.get_config(), "tpu:v9:2x4", str(tmp_path))
    with pytest.raises(RuntimeError) as e:
        child.compile_in_child(run, "towers", 4)
    assert str(e.value).startswith(
        "compiling towers at batch 4 per chip for tpu:v9:2x4 in a child process failed (exit status 1): "
        "ValueError: --compile_only='tpu:v9:2x4': unknown tpu chip 'v9'"
    ), e.value


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
    header = "attention xla (XLA's dot_product_attention)"  # the config's word, then what it compiled to
    assert header in (tmp_path / "compile_report.md").read_text()


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


# ---------------------------------------------------------------------------------------------- GPU targets


def gpu_compile_elsewhere(request) -> bool:
    """True once the test ``request`` names has passed in a child pytest whose ``PYTHONPATH`` starts with
    ``SMARTVLM_GPU_COMPILE_PATH`` (a folder holding the ``[gpu-compile]`` extra); False where this interpreter
    has the extra itself. Skips (saying why) where neither has it; with SMARTVLM_REQUIRE_GPU_COMPILE=1 (CI
    sets it) its absence fails instead."""
    from smartvlm_jax.aot import gpu

    try:
        gpu.require_plugin()
        return False
    except RuntimeError as e:
        missing = str(e)
    folder = os.environ.get("SMARTVLM_GPU_COMPILE_PATH")
    if folder:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, SMARTVLM_REQUIRE_GPU_COMPILE="1", SMARTVLM_GPU_COMPILE_PATH="")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (folder, root, env.get("PYTHONPATH")) if p)
        child = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", request.node.nodeid],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        )
        assert child.returncode == 0 and "1 passed" in child.stdout, (
            child.stdout[-4000:] + child.stderr[-4000:]
        )
        return True
    if os.environ.get("SMARTVLM_REQUIRE_GPU_COMPILE") == "1":
        pytest.fail(missing)
    pytest.skip(
        f"the [gpu-compile] extra is not installed here nor named by SMARTVLM_GPU_COMPILE_PATH ({missing})"
    )


def test_gpu_target_descriptions_agree_with_the_chip_figures():
    from smartvlm_jax.aot import gpu

    for name in ("h100", "h200", "a100"):
        text, chip = gpu.target_config(name), targets.CHIPS[name]
        assert gpu.spec_value(text, "device_memory_size") == chip.hbm_bytes, name
        assert gpu.spec_value(text, "memory_bandwidth") == chip.hbm_bandwidth, name
        fields = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
        assert "collective_memory_granularity" not in fields  # jax 0.10.2's plugin refuses the line
        assert 'platform_name: "CUDA"' in text
    assert gpu.spec_value(gpu.target_config("a100"), "core_count") == 108
    with pytest.raises(ValueError, match="no GPU target description for 'v100'"):
        gpu.target_config("v100")


def test_library_call_bytes_count_data_not_workspace():
    """The bytes a cuBLAS call moves, read from optimized HLO shapes: its result and operands, not its s8
    workspace (the GPU figures add these to XLA's cost analysis, which counts custom calls as nothing)."""
    assert report._shape_bytes("(bf16[64,1024]{1,0}, s8[4194304]{0})") == 64 * 1024 * 2
    assert report._shape_bytes("f32[2,3]{1,0}") == 24 and report._shape_bytes("pred[4]") == 4
    assert report._shape_bytes("u8[16,224,224,3]{3,2,1,0}") == 16 * 224 * 224 * 3
    text = (
        "  %p.1 = bf16[512,1024]{1,0} parameter(1)\n"
        '  %cc = (bf16[64,1024]{1,0}, s8[4194304]{0}) custom-call(%p, %p.1), custom_call_target="x"\n'
    )
    found = report._INSTRUCTION.findall(text)
    assert [(n, op, args) for n, _, op, args in found] == [
        ("p.1", "parameter", "1"),
        ("cc", "custom-call", "%p, %p.1"),
    ]


def test_gpu_attention_falls_back_to_xla_quoting_why_cudnn_did_not_compile(monkeypatch):
    import jax
    import numpy as np

    from smartvlm_jax.aot import gpu, programs

    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    h100, v5e = targets.parse("gpu:h100:1x8"), targets.parse("tpu:v5e:2x4")
    monkeypatch.setattr(gpu, "cudnn_attention_error", lambda devices: "RuntimeError: cuDNN not found.")
    impl, note = programs.attention_for(h100, mesh, "bfloat16")
    assert impl == "fused" and "cuDNN attention did not compile here (RuntimeError: cuDNN not found.)" in note
    assert programs.attention_for(h100, mesh, "float32") == ("fused", "")  # cuDNN is asked for in bf16 only
    assert programs.attention_for(v5e, mesh, "bfloat16") == ("fused", "")
    monkeypatch.setattr(gpu, "cudnn_attention_error", lambda devices: "")
    assert programs.attention_for(h100, mesh, "bfloat16") == ("cudnn", "")


def test_a_gpu_target_without_the_extra_names_it(monkeypatch):
    import importlib.util

    from smartvlm_jax.aot import gpu

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if "cuda" in n else found(n, *a))
    with pytest.raises(RuntimeError, match=re.escape("pip install -e '.[gpu-compile]'")):
        targets.parse("gpu:h100:1x8").devices()
    assert gpu.COMPILER_OPTIONS == {"xla_gpu_enable_triton_gemm": False}
    assert targets.parse("gpu:a100:1x8").compiler_options == gpu.COMPILER_OPTIONS
    assert targets.parse("tpu:v5e:2x4").compiler_options == {}


@pytest.mark.slow
def test_smoke_config_compiles_for_8_h100s_and_a_batch_too_large_is_refused(tmp_path, request):
    """The smoke config for gpu:h100:1x8 (no GPU here): figures positive, no CPU custom call, the report
    written; an extraction batch beyond the HBM (which the GPU compiler never refuses by itself) is refused
    naming the HBM, and a search finds a batch that fits."""
    if gpu_compile_elsewhere(request):
        return
    from smartvlm_jax import aot
    from smartvlm_jax.aot import programs

    cfg = smoke.get_config()
    cfg.eval_batch_size = 8 * (1 << 21)  # 2M tiny images per GPU: ~100s of GiB of activations
    with pytest.raises(aot.DoesNotFit) as e:
        aot.compile_run(cfg, tmp_path, "gpu:h100:1x8", search_budget=1, print_table=False)
    message = str(e.value)
    assert re.search(r"towers needs [\d.]+ GiB per chip on gpu:h100:1x8 \(HBM 74\.51 GiB\)", message), message
    result = json.loads((tmp_path / "compile_report.json").read_text())
    assert result["refused"] == message and "| towers |" in (tmp_path / "compile_report.md").read_text()
    assert result["devices"] == 8 and result["mesh"] == {"data": 8, "fsdp": 1}
    progs = {p["name"]: p for p in result["programs"]}
    assert list(progs) == ["towers", "train_step", "eval_step"]
    assert progs["train_step"]["fits"] and not progs["towers"]["fits"]
    for p in progs.values():
        for field in ("argument_bytes", "peak_bytes", "flops", "bytes_accessed", "roofline_s", "compile_s"):
            assert p[field] > 0, (p["name"], field)
        assert p["flops_source"] == "lowered HLO on CPU/devices; bytes: optimized HLO on CPU"
        assert p["cpu_custom_calls"] == [], p["custom_calls"]
        assert any(c.startswith("__cublas") for c in p["custom_calls"]), p["custom_calls"]  # GPU kernels
    assert progs["towers"]["peak_bytes"] > targets.CHIPS["h100"].hbm_bytes
    # the largest extraction batch: searched over compiles of the towers program alone
    spec = targets.parse("gpu:h100:1x8")
    plan = programs.plan(cfg, spec, tmp_path)
    towers = plan.programs[0]
    # bf16 asks for cuDNN attention: compiled where the cuDNN library is installed, else XLA's, saying why
    impl, note = programs.attention_for(spec, plan.mesh, "bfloat16")
    assert (impl, bool(note)) in {("cudnn", False), ("fused", True)}, note
    compile_fn = lambda b: report.compile_at(towers, b, 8, options=spec.compiler_options)
    first = report.Compiled(towers.batch, True, 0.0, peak_bytes=progs["towers"]["peak_bytes"])
    best, found = report.largest_batch(compile_fn, first, spec.chip, budget=3)
    assert 0 < best < towers.batch and report.fits(found[best], spec.chip), found
