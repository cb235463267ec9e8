"""Throughput of smartvlm_jax against the reference's design in PyTorch: same inputs, same machine, same run.

    python -m benchmarks.throughput [--quick | --tiny] [--out results.json] [--dtype bfloat16] [--compile]

Rows (JAX vs PyTorch eager, and ``torch.compile`` where asked and where it works; the ratio JAX/eager):
  * towers forward: DINOv2 + SigLIP vision + SigLIP text, mean-pooled, from preprocessed inputs;
    and their FLOP/s (XLA's count of the forward) as a fraction of the 2048^3 matmul FLOP/s of the same run;
  * full training step from the loader's images: tower preprocessing + both towers + head fwd/bwd + AdamW.
    JAX: the towers' PIL resizers and tokenizer on the host, then ``train.train_step`` jitted with the towers
    inside; PyTorch: the reference's step (tensor -> PIL -> HF image processors, tokenizer, towers, the
    ported head with its per-puzzle loops, AdamW) — see ``benchmarks.reference_design``;
  * head-only training step from cached features (``train.train_step`` on features vs the port + AdamW);
  * inference from the loader's images (preprocess, towers, head, argmax);
  * input pipeline: ours (grain: decode, 224 resize, both towers' resizers, tokenizer) vs the reference's
    loader (torch DataLoader: decode, 224 resize, to-tensor; its tower preprocessing runs in its step);
  * whole small run, wall time: ``train.train_and_evaluate`` (feature cache, jitted head, Orbax, plots) vs
    ``reference_design.whole_run`` (towers every step and every validation) on the same synthetic set.

Towers are random-init with the released configs (dinov2-base, siglip-base-patch16-224), written as HF
directories by transformers and loaded by both sides, so both run the same weights. ``--tiny`` uses tiny
towers (for tests). Each figure (``benchmarks/timing.py``): one warm-up call (JAX compiles there), then
``--repeats`` timed calls, each waited for (JAX arrays, CUDA); median, min, max and spread = (max - min) /
median. Prints a markdown table; ``--out`` writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch

from benchmarks import reference_design as ref
from benchmarks import timing
from smartvlm_jax import cli, optim, reasoner, train
from smartvlm_jax import features as features_lib
from smartvlm_jax import towers as towers_lib
from smartvlm_jax.data import build, pipeline, smart101, synthetic
from smartvlm_jax.towers.released import RELEASED
from tests.support import tiny_towers

# The base towers' released configs.
BASE_CONFIGS = {
    "dinov2": RELEASED["facebook/dinov2-base"],
    "siglip": RELEASED["google/siglip-base-patch16-224"],
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes of one benchmark mode."""

    towers: str  # "base" | "tiny"
    batch: int  # batch of the tower rows (towers forward, full step, inference)
    head_batch: int  # batch of the head-only rows
    repeats: int  # timed calls per figure (after one warm-up call)
    per_puzzle: int  # synthetic instances per puzzle for the whole run (11 synthetic puzzles)
    run_batch: int  # batch of the whole runs
    epochs: int  # epochs of the whole runs
    pipeline_epochs: int  # epochs of the input-pipeline row
    compile: bool  # also time torch.compile where it works
    run_puzzles: int = 0  # the whole run uses the first this many synthetic puzzles (0: all 11)


MODES = {
    "full": Settings("base", 16, 128, 5, 20, 16, 3, 3, True),
    "quick": Settings("base", 2, 128, 5, 5, 8, 3, 2, False, run_puzzles=6),
    "tiny": Settings("tiny", 4, 32, 5, 5, 8, 1, 1, False),
}


# ----------------------------------------------------------------------------------------------------
# Timing.


def measure(fn: Callable[[], Any], repeats: int, items: int) -> dict[str, float]:
    """One warm-up call, then ``repeats`` timed calls (:mod:`benchmarks.timing`, which waits for JAX arrays
    and CUDA): median/min/max seconds, spread and items/s at the median."""
    return timing.time_call(fn, repeats).summary(items)


def try_measure(fn: Callable[[], Any], repeats: int, items: int) -> dict[str, Any]:
    """:func:`measure`, or ``{"error": ...}`` when the call fails (torch.compile may not handle a model)."""
    try:
        return measure(fn, repeats, items)
    except Exception as e:  # any failure of torch.compile is a result to report
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}


def matmul_flops(repeats: int, dtype: str, torch_device: str = "cpu") -> dict[str, dict[str, float]]:
    """2048^3 matmul FLOP/s of JAX and PyTorch (the machine's attainable matmul rate in this run)."""
    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    if dtype == "bfloat16":
        ja = jnp.asarray(a, jnp.bfloat16)
        f = jax.jit(lambda x: jnp.matmul(x, x, preferred_element_type=jnp.float32))
        ta = torch.from_numpy(a).bfloat16().to(torch_device)
    else:
        ja, f, ta = jnp.asarray(a), jax.jit(lambda x: x @ x), torch.from_numpy(a).to(torch_device)
    out = {
        "jax": measure(lambda: f(ja), repeats, 1),
        "torch": measure(lambda: ta @ ta, repeats, 1),
    }
    for v in out.values():
        v["flop_per_s"] = 2 * n**3 * v["per_s"]
    return out


# ----------------------------------------------------------------------------------------------------
# Inputs: towers (HF dirs both sides load), synthetic puzzles, the head's config.


def write_towers(out: pathlib.Path, size: str, questions: Sequence[str]) -> dict[str, str]:
    """Random-init HF directories (transformers ``save_pretrained``) for DINOv2 and SigLIP + tokenizer."""
    import transformers

    torch.manual_seed(0)
    if size == "tiny":
        dino_cfg = {k: v for k, v in towers_lib.tiny_config("dinov2").items() if k != "model_type"}
        sig = towers_lib.tiny_config("siglip")
        sig_cfg = {"vision_config": sig["vision_config"], "text_config": sig["text_config"]}
        vocab = sig["text_config"]["vocab_size"]
    else:
        dino_cfg = {k: v for k, v in BASE_CONFIGS["dinov2"].items() if k != "model_type"}
        sig_cfg = {"vision_config": {}, "text_config": {}}
        vocab = 500  # a small BPE model is enough to tokenise; ids index the 32000-row embedding
    spiece = towers_lib.train_sentencepiece(
        sorted({q.lower() for q in questions} | set(tiny_towers.sentences())), out / "spm", vocab
    )
    dirs = {"dinov2": str(out / "dinov2"), "siglip": str(out / "siglip")}
    transformers.Dinov2Model(transformers.Dinov2Config(**dino_cfg)).save_pretrained(dirs["dinov2"])
    transformers.SiglipModel(transformers.SiglipConfig(**sig_cfg)).save_pretrained(dirs["siglip"])
    transformers.SiglipTokenizer(vocab_file=str(spiece)).save_pretrained(dirs["siglip"])
    return dirs


def head_config(rows: Sequence[smart101.Row], frozen: features_lib.FrozenTowers) -> ml_collections.ConfigDict:
    cfg = reasoner.default_config()
    classes = smart101.num_classes(rows)
    cfg.puzzle_ids = sorted(classes)
    cfg.num_classes = [int(classes[p]) for p in cfg.puzzle_ids]
    cfg.vision_dim, cfg.text_dim = frozen.vision_dim, frozen.text_dim
    return cfg


def optim_config() -> ml_collections.ConfigDict:
    from configs import smarter

    return smarter.get_config().optim


@dataclasses.dataclass
class Bench:
    """Everything the rows share."""

    settings: Settings
    dtype: str
    workdir: pathlib.Path
    root: str
    data_dir: str
    rows: list[smart101.Row]
    tower_dirs: dict[str, str]
    frozen: features_lib.FrozenTowers
    head_cfg: ml_collections.ConfigDict
    optim_cfg: ml_collections.ConfigDict
    torch_device: str = "cpu"
    peak_flop_per_s: float = 0.0  # the accelerator's peak for MFU (0: not reported)

    def loader_batch(self, size: int) -> tuple[dict[str, Any], list]:
        """The same ``size`` train rows as the reference loader yields them and as 224-side PIL images."""
        rows = [self.rows[i % len(self.rows)] for i in range(size)]
        items = ref.collate([ref.ReferenceItems(rows)[i] for i in range(size)])
        return items, [smart101.load_image(r.image_path) for r in rows]

    def reference(self, *, compile_towers: bool = False, compile_head: bool = False) -> ref.ReferenceDesign:
        return ref.ReferenceDesign(
            self.tower_dirs,
            self.head_cfg,
            self.optim_cfg,
            total_steps=1000,
            dtype=self.dtype,
            device=self.torch_device,
            compile_towers=compile_towers,
            compile_head=compile_head,
        )


def prepare(settings: Settings, dtype: str, workdir: pathlib.Path, torch_device: str = "cpu") -> Bench:
    root, data_dir = workdir / "synthetic", workdir / "tfds"
    per_puzzle = max(settings.per_puzzle, math.ceil(max(settings.batch, settings.head_batch) / 11) + 1)
    synthetic.write_dataset(str(root), per_puzzle=per_puzzle, seed=0)
    build.build(str(root), str(data_dir))
    rows = smart101.read_rows(root)
    tower_dirs = write_towers(workdir / "towers", settings.towers, [r.question for r in rows])
    towers_cfg = ml_collections.ConfigDict(
        {"dinov2": tower_dirs["dinov2"], "siglip": tower_dirs["siglip"], "dtype": dtype}
    )
    frozen = features_lib.load_towers(towers_cfg, "fused")
    return Bench(
        settings,
        dtype,
        workdir,
        str(root),
        str(data_dir),
        rows,
        tower_dirs,
        frozen,
        head_config(rows, frozen),
        optim_config(),
        torch_device,
    )


# ----------------------------------------------------------------------------------------------------
# JAX side: the trainer's own pieces.


def jax_state(bench: Bench, model, tx) -> train.TrainState:
    inputs = reasoner.checkpoint.example_inputs(bench.head_cfg, batch=1)
    params = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, *inputs)["params"]
    return train.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(2)),
    )


def host_preprocess(frozen: features_lib.FrozenTowers, images: Sequence, questions: Sequence[str]) -> dict:
    """What our pipeline does per example for the towers: each tower's PIL resizer, the tokenizer."""
    batch = {f"image/{n}": np.stack([r(im) for im in images]) for n, r in frozen.preprocessors().items()}
    batch["question_ids"] = frozen.text.tokenizer(list(questions))
    return batch


def labels_batch(items: dict[str, Any]) -> dict[str, np.ndarray]:
    n = len(items["questions"])
    return {
        "labels": items["labels"].numpy().astype(np.int32),
        "puzzle_ids": items["puzzle_ids"].numpy().astype(np.int32),
        "mask": np.ones(n, bool),
    }


def result(jax_m: dict, eager: dict | None, compiled: dict | None, unit: str, **extra) -> dict:
    return {"unit": unit, "jax": jax_m, "torch_eager": eager, "torch_compile": compiled, **extra}


def bench_towers(bench: Bench, matmul: dict) -> dict:
    """Towers forward from preprocessed inputs, and FLOP/s against the measured matmul FLOP/s."""
    s, frozen = bench.settings, bench.frozen
    items, images = bench.loader_batch(s.batch)
    batch = jax.device_put(host_preprocess(frozen, images, items["questions"]))
    params = frozen.params()
    fwd = frozen.jitted_features
    # counted on XLA's dots: the oneDNN custom calls that run the towers on CPU carry no cost analysis
    cost = fwd.lower(frozen.params(pack=False), batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", float("nan")))
    jax_m = measure(lambda: fwd(params, batch), s.repeats, s.batch)

    design = bench.reference()
    pixels, ids = design.pixel_values(items["images"]), design.token_ids(items["questions"])
    eager = measure(lambda: design.tower_features(pixels, ids), s.repeats, s.batch)
    compiled = None
    if s.compile:
        cdesign = bench.reference(compile_towers=True)
        compiled = try_measure(lambda: cdesign.tower_features(pixels, ids), s.repeats, s.batch)
    flop_rates = {}
    for name, m, mm in (
        ("jax", jax_m, "jax"),
        ("torch_eager", eager, "torch"),
        ("torch_compile", compiled, "torch"),
    ):
        if m and "median_s" in m:
            rate = flops / m["median_s"]
            flop_rates[name] = {"flop_per_s": rate, "fraction_of_matmul": rate / matmul[mm]["flop_per_s"]}
            if bench.peak_flop_per_s > 0:  # MFU against the accelerator's datasheet peak
                flop_rates[name]["mfu"] = rate / bench.peak_flop_per_s
    return result(jax_m, eager, compiled, "samples/s", forward_flops=flops, flop_rates=flop_rates)


def bench_full_step(bench: Bench) -> dict:
    """Whole training step from the loader's batch; JAX's host preprocessing is timed inside the step."""
    s, frozen = bench.settings, bench.frozen
    items, images = bench.loader_batch(s.batch)
    model, tx = reasoner.build(bench.head_cfg), optim.make_optimizer(bench.optim_cfg, 1000)
    schedule = optim.learning_rate_schedule(bench.optim_cfg, 1000)
    step = jax.jit(
        functools.partial(
            train.train_step, model=model, model_cfg=bench.head_cfg, tx=tx, schedule=schedule, towers=frozen
        ),
        donate_argnums=(0,),
    )
    tower_params = frozen.params()
    state = [jax_state(bench, model, tx)]
    host = []

    def jax_step():
        t = time.perf_counter()
        batch = {**host_preprocess(frozen, images, items["questions"]), **labels_batch(items)}
        host.append(time.perf_counter() - t)
        state[0], metrics = step(state[0], batch, tower_params)
        return metrics.loss.compute()  # timing.wait blocks on it

    jax_m = measure(jax_step, s.repeats, s.batch)
    jax_m["host_preprocess_median_s"] = statistics.median(host[1:])
    design = bench.reference()
    eager = measure(lambda: design.train_step(items), s.repeats, s.batch)
    compiled = None
    if s.compile:
        cdesign = bench.reference(compile_towers=True, compile_head=True)
        compiled = try_measure(lambda: cdesign.train_step(items), s.repeats, s.batch)
    return result(jax_m, eager, compiled, "samples/s")


def head_features(bench: Bench, size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    rows = [bench.rows[i] for i in rng.permutation(len(bench.rows))[:size]]
    return {
        "vision": rng.standard_normal((size, bench.frozen.vision_dim), np.float32),
        "text": rng.standard_normal((size, bench.frozen.text_dim), np.float32),
        "labels": np.asarray([r.label for r in rows], np.int32),
        "puzzle_ids": np.asarray([r.puzzle_id for r in rows], np.int32),
        "mask": np.ones(size, bool),
    }


def bench_head_step(bench: Bench) -> dict:
    """Head-only training step from cached features (what every step of our cached training runs)."""
    s = bench.settings
    batch = head_features(bench, s.head_batch)
    model, tx = reasoner.build(bench.head_cfg), optim.make_optimizer(bench.optim_cfg, 1000)
    schedule = optim.learning_rate_schedule(bench.optim_cfg, 1000)
    step = jax.jit(
        functools.partial(train.train_step, model=model, model_cfg=bench.head_cfg, tx=tx, schedule=schedule),
        donate_argnums=(0,),
    )
    state = [jax_state(bench, model, tx)]
    dev_batch = jax.device_put(batch)

    def jax_step():
        state[0], metrics = step(state[0], dev_batch, None)
        return metrics.loss.compute()  # timing.wait blocks on it

    jax_m = measure(jax_step, s.repeats, s.head_batch)
    targs = [torch.from_numpy(batch[k]) for k in ("vision", "text")]
    targs += [torch.from_numpy(batch[k].astype(np.int64)) for k in ("puzzle_ids", "labels")]
    targs = [t.to(bench.torch_device) for t in targs]
    design = bench.reference()
    eager = measure(lambda: design.head_step(*targs), s.repeats, s.head_batch)
    compiled = None
    if s.compile:
        cdesign = bench.reference(compile_head=True)
        compiled = try_measure(lambda: cdesign.head_step(*targs), s.repeats, s.head_batch)
    return result(jax_m, eager, compiled, "samples/s")


def bench_inference(bench: Bench) -> dict:
    """Predictions from the loader's images: preprocess, towers, head, argmax."""
    s, frozen = bench.settings, bench.frozen
    items, images = bench.loader_batch(s.batch)
    model = reasoner.build(bench.head_cfg)
    params = jax_state(bench, model, optax_identity()).params
    pred = jax.jit(
        functools.partial(train.predict_step, model=model, model_cfg=bench.head_cfg, towers=frozen)
    )
    tower_params = frozen.params()

    def jax_predict():
        batch = {**host_preprocess(frozen, images, items["questions"]), **labels_batch(items)}
        return np.asarray(pred(params, batch, tower_params))

    jax_m = measure(jax_predict, s.repeats, s.batch)
    design = bench.reference()
    eager = measure(lambda: design.predict(items), s.repeats, s.batch)
    compiled = None
    if s.compile:
        cdesign = bench.reference(compile_towers=True, compile_head=True)
        compiled = try_measure(lambda: cdesign.predict(items), s.repeats, s.batch)
    return result(jax_m, eager, compiled, "samples/s")


def optax_identity():
    import optax

    return optax.identity()


def bench_pipeline(bench: Bench) -> dict:
    """Examples/s of the train split through our grain pipeline and through the reference's loader."""
    s, frozen = bench.settings, bench.frozen
    data_cfg = smart101.default_data_config()
    data_cfg.data_tot = 10**6
    train_rows = smart101.split_rows(bench.rows, "train", data_cfg, smart101.num_classes(bench.rows))
    batch, epochs = s.run_batch, s.pipeline_epochs

    def ours():
        ds = pipeline.make_pipeline(
            bench.data_dir,
            "train",
            data_cfg,
            global_batch_size=batch,
            preprocessors=frozen.preprocessors(),
            tokenizer=frozen.text.tokenizer,
            seed=0,
            shuffle=True,
            num_epochs=epochs,
            drop_remainder=True,
            process_index=0,
            process_count=1,
        )
        for _ in ds:
            pass

    def reference():
        loader = torch.utils.data.DataLoader(
            ref.ReferenceItems(train_rows),
            batch_size=batch,
            shuffle=True,
            collate_fn=ref.collate,
            drop_last=True,
        )
        for _ in range(epochs):
            for _ in loader:
                pass

    n = epochs * (len(train_rows) // batch) * batch
    return result(
        measure(ours, s.repeats, n),
        measure(reference, s.repeats, n),
        None,
        "examples/s",
        note="ours includes both towers' resizes and tokenization; the reference does those in its step",
    )


def bench_whole_run(bench: Bench) -> dict:
    """Wall time of a whole small run (load, train N epochs, validate each epoch, test the best)."""
    from configs import smarter

    s = bench.settings
    cfg = smarter.get_config()
    cfg.data.root, cfg.data.data_tot = bench.root, s.per_puzzle
    cfg.towers.dinov2, cfg.towers.siglip, cfg.towers.dtype = (
        bench.tower_dirs["dinov2"],
        bench.tower_dirs["siglip"],
        bench.dtype,
    )
    cfg.batch_size = cfg.eval_batch_size = s.run_batch
    cfg.num_epochs, cfg.early_stop_patience = s.epochs, 10**6
    cfg.checkpoint_every_steps = cfg.log_every_steps = 10**6

    def ours():
        with tempfile.TemporaryDirectory(dir=bench.workdir) as wd, contextlib.redirect_stdout(io.StringIO()):
            cfg.data.data_dir = os.path.join(wd, "tfds")  # our run builds its dataset: part of the wall time
            out["ours"] = train.train_and_evaluate(cfg, wd)

    ids = sorted({r.puzzle_id for r in bench.rows})[: s.run_puzzles or None]
    cfg.data.puzzle_ids = ",".join(str(p) for p in ids)
    rows = [r for r in bench.rows if r.puzzle_id in ids]
    data_cfg = ml_collections.ConfigDict(cfg.data)  # data_tot picks the same first rows for both runs
    classes = smart101.num_classes(rows)
    splits = {k: smart101.split_rows(rows, k, data_cfg, classes) for k in train.SPLITS}

    def reference():
        out["reference"] = ref.whole_run(
            bench.tower_dirs,
            head_config(rows, bench.frozen),
            bench.optim_cfg,
            splits,
            classes,
            batch=s.run_batch,
            epochs=s.epochs,
            dtype=bench.dtype,
            device=bench.torch_device,
        )

    out: dict[str, Any] = {}
    # One run each, no warm-up (a run compiles and loads once, which is part of what it costs).
    timings = timing.time_rounds({"ours": ours, "reference": reference}, repeats=1, warmup=0)
    return result(
        timings["ours"].summary(),
        timings["reference"].summary(),
        None,
        "s (wall)",
        rows={k: len(v) for k, v in splits.items()},
        epochs=s.epochs,
        batch=s.run_batch,
        test_S_acc={"ours": float(out["ours"]["test"]["S_acc"]), "reference": out["reference"]["test_S_acc"]},
    )


# ----------------------------------------------------------------------------------------------------
# Report.

ROWS = {
    "towers_forward": ("towers forward (DINOv2 + SigLIP vision + text)", bench_towers),
    "full_train_step": ("full training step (towers + head + AdamW)", bench_full_step),
    "head_train_step": ("head-only training step (cached features)", bench_head_step),
    "inference": ("inference (images -> answers)", bench_inference),
    "input_pipeline": ("input pipeline", bench_pipeline),
    "whole_run": ("whole small run", bench_whole_run),
}


def _cell(m: dict | None, wall: bool) -> str:
    if not m:
        return "-"
    if "error" in m:
        return "fails"
    value = m["median_s"] if wall else m["per_s"]
    return f"{value:.3g} ±{100 * m['spread'] / 2:.0f}%" if m["repeats"] > 1 else f"{value:.3g}"


def format_table(report: dict) -> str:
    """Markdown table: median (± half the relative max-min spread), and the speed ratio JAX / eager."""
    lines = [
        "| row | unit | batch | JAX | PyTorch eager | torch.compile | JAX speed-up vs eager |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in report["rows"].items():
        wall = r["unit"].startswith("s ")
        ratio = r["torch_eager"]["median_s"] / r["jax"]["median_s"]
        lines.append(
            f"| {ROWS[key][0]} | {r['unit']} | {r.get('batch', '')} | {_cell(r['jax'], wall)} | "
            f"{_cell(r['torch_eager'], wall)} | {_cell(r['torch_compile'], wall)} | {ratio:.2f}x |"
        )
    mm = report["matmul"]
    lines.append(
        f"| matmul 2048^3 ({report['config']['dtype']}) | GFLOP/s | | "
        f"{mm['jax']['flop_per_s'] / 1e9:.0f} | {mm['torch']['flop_per_s'] / 1e9:.0f} | | |"
    )
    tw = report["rows"].get("towers_forward")
    if tw:
        fr = tw["flop_rates"]
        cell = lambda k: (
            f"{fr[k]['flop_per_s'] / 1e9:.0f} ({100 * fr[k]['fraction_of_matmul']:.0f}%)" if k in fr else "-"
        )
        lines.append(
            f"| towers forward, GFLOP/s (% of matmul) | GFLOP/s | {tw['batch']} | {cell('jax')} | "
            f"{cell('torch_eager')} | {cell('torch_compile')} | |"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import flax
    import optax
    import transformers

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "load_average": load,
        "jax_devices": [str(d) for d in jax.devices()],
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "versions": {
            "jax": jax.__version__,
            "flax": flax.__version__,
            "optax": optax.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
        },
    }


def run(
    settings: Settings,
    dtype: str,
    rows: Sequence[str],
    workdir: pathlib.Path,
    torch_device: str = "cpu",
    peak_tflops: float = 0.0,
    out: str = "",
) -> dict:
    """Measure ``rows`` (keys of :data:`ROWS`) and return the report (JSON-ready); with ``out``, the report
    so far is written there after every row (a run cut by a time limit keeps the rows it finished)."""
    start = time.perf_counter()
    bench = prepare(settings, dtype, workdir, torch_device)
    bench.peak_flop_per_s = peak_tflops * 1e12
    config = {"dtype": dtype, "torch_device": torch_device, "peak_tflops": peak_tflops}
    report: dict[str, Any] = {"config": {**config, **dataclasses.asdict(settings)}, "rows": {}}
    report["matmul"] = matmul_flops(settings.repeats, dtype, torch_device)
    for key in rows:
        t = time.perf_counter()
        r = ROWS[key][1](bench, report["matmul"]) if key == "towers_forward" else ROWS[key][1](bench)
        r.setdefault(
            "batch",
            {
                "head_train_step": settings.head_batch,
                "input_pipeline": settings.run_batch,
                "whole_run": settings.run_batch,
            }.get(key, settings.batch),
        )
        r["bench_seconds"] = time.perf_counter() - t
        report["rows"][key] = r
        print(f"  {key}: {r['bench_seconds']:.0f} s", file=sys.stderr, flush=True)
        if out:
            write_report(report, out)
    report["machine"] = machine()
    report["total_seconds"] = time.perf_counter() - start
    return report


def write_report(report: dict, path: str) -> None:
    pathlib.Path(path).write_text(json.dumps(report, indent=2, default=float) + "\n")


def quiet_transformers() -> None:
    """Silence what transformers prints while the benchmark writes and loads its random towers: progress
    bars per shard written or loaded, and notices that random configs' special token ids lie outside the
    small vocabulary. Neither says anything about the timings. (Errors still print.)"""
    import huggingface_hub
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


def main(argv: Sequence[str] | None = None) -> dict:
    cli.keep_jax_off_absent_accelerators()  # an installed libtpu or CUDA plugin stays quiet here
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="base towers, small batches (< 5 min on 2 cores)")
    mode.add_argument("--tiny", action="store_true", help="tiny towers (tests)")
    parser.add_argument("--out", default="", help="write the JSON report here")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="towers' dtype, both frameworks (bfloat16 on GPU/TPU)",
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time torch.compile (default: on in the full mode)",
    )
    parser.add_argument(
        "--torch-device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="PyTorch's device (JAX uses its default backend)",
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=0.0, help="accelerator peak (dense, at --dtype) for towers' MFU"
    )
    parser.add_argument("--batch", type=int, default=0, help="override the tower rows' batch")
    parser.add_argument("--repeats", type=int, default=0, help="override the timed repeats (>= 5 advised)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {list(ROWS)}")
    parser.add_argument("--workdir", default="", help="scratch directory (default: a temporary one)")
    args = parser.parse_args(argv)
    quiet_transformers()
    settings = MODES["quick" if args.quick else "tiny" if args.tiny else "full"]
    overrides = {"batch": args.batch, "repeats": args.repeats}
    settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v > 0})
    if args.compile is not None:
        settings = dataclasses.replace(settings, compile=args.compile)
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"--rows: unknown {unknown}; known: {list(ROWS)}")
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="smartvlm_bench_"))
        report = run(
            settings,
            args.dtype,
            rows,
            pathlib.Path(workdir).absolute(),
            args.torch_device,
            args.peak_tflops,
            args.out,
        )
    print(format_table(report))
    m = report["machine"]
    print(
        f"\n{m['cpus']} CPUs, load {m['load_average']}, jax {m['versions']['jax']}, torch "
        f"{m['versions']['torch']}, {report['total_seconds']:.0f} s in all"
    )
    if args.out:
        write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
