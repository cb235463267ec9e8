"""The compile-only report as a table, ``compile_report.json`` and ``compile_report.md``."""

from __future__ import annotations

import datetime
import json
import pathlib
from typing import Any

import jax

from smartvlm_jax import fileio
from smartvlm_jax.aot.programs import Plan
from smartvlm_jax.aot.report import ProgramReport
from smartvlm_jax.aot.targets import GIB

JSON_FILE = "compile_report.json"
MD_FILE = "compile_report.md"


def to_json(plan: Plan, reports: list[ProgramReport], estimate: dict, refused: str) -> dict[str, Any]:
    """The report as one JSON object (bytes, FLOPs and seconds per device; batches per device and global)."""
    chip, n = plan.target.chip, plan.mesh.devices.size
    return {
        "target": plan.target.text,
        "chip": {
            "name": chip.name,
            "description": chip.description,
            "hbm_bytes": chip.hbm_bytes,
            "peak_flops": chip.peak_flops,
            "hbm_bandwidth": chip.hbm_bandwidth,
        },
        "devices": n,
        "mesh": dict(plan.mesh.shape),
        "towers_attention": "flash" if plan.attention == "flash" else "xla",  # --config.towers.attention
        "attention": plan.attention,  # the formulation it compiled to (xla.ATTENTION_IMPLS)
        "attention_note": plan.attention_note,
        "towers": plan.towers,
        "classes_from": plan.classes_from,
        "jax": jax.__version__,
        "written": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "programs": [r.to_json(chip, n) for r in reports],
        "estimate": estimate,
        "refused": refused,
    }


# What each attention formulation (xla.ATTENTION_IMPLS) is, in the console's header
IMPL_WORDS = {
    "fused": "XLA's dot_product_attention",
    "cudnn": "cuDNN's fused attention",
    "flash": "the Pallas flash-attention kernel",
    "cpu": "the CPU formulation",
}


def _gib(b: float) -> str:
    return f"{b / GIB:.3f}"


def table(report: dict[str, Any]) -> str:
    """A Markdown table of the programs and the run estimate (what the console prints)."""
    hbm = report["chip"]["hbm_bytes"]
    lines = [
        f"compile-only: {report['target']} ({report['chip']['description']}), {report['devices']} devices, "
        f"mesh {report['mesh']}, attention {report.get('towers_attention', 'xla')} "
        f"({IMPL_WORDS.get(report['attention'], report['attention'])}); towers {report['towers']}; "
        f"C_p from {report['classes_from']}",
        "",
        "| program | batch/chip | args GiB | out GiB | temp GiB | peak GiB | HBM GiB | fits | GFLOP | "
        "GB accessed | roofline ms | compile s | max batch/chip |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for p in report["programs"]:
        lines.append(
            f"| {p['name']} | {p['per_device_batch']} | {_gib(p['argument_bytes'])} "
            f"| {_gib(p['output_bytes'])} "
            f"| {_gib(p['temp_bytes'])} | {_gib(p['peak_bytes'])} | {_gib(hbm) if hbm else '-'} "
            f"| {'yes' if p['fits'] else 'NO'} | {p['flops'] / 1e9:.2f} | {p['bytes_accessed'] / 1e9:.3f} "
            f"| {1e3 * p['roofline_s']:.3f} | {p['compile_s']:.1f} | {p['max_per_device_batch']} |"
        )
    crashes = [f"{p['name']}: {p['search_crash']}" for p in report["programs"] if p.get("search_crash")]
    if crashes:  # the max batch of such a program is a floor: a larger one crashed, not refused
        lines += ["", "compiler crashed in the largest-batch search (max batch/chip is a floor):", *crashes]
    if report.get("attention_note"):
        lines += ["", f"attention: {report['attention_note']}"]
    e = report["estimate"]
    s = e["seconds"]
    lines += [
        "",
        f"run ({e['rows']} rows, {e['epochs']} epochs): extraction {s['extraction']:.1f} s "
        f"({e['extraction_images_per_s']:.0f} instances/s), training {s['train']:.1f} s "
        f"({e['train_steps_per_s']:.1f} steps/s), evaluation {s['eval']:.1f} s; total {s['total']:.1f} s "
        f"= {e['chip_hours']:.4f} chip-hours (roofline: a lower bound)",
        f"tower passes: {e['tower_passes']:,} (each instance once) vs the reference design's "
        f"{e['reference_tower_passes']:,} (towers in every step)",
    ]
    if report["refused"]:
        lines += ["", "DOES NOT FIT:", report["refused"]]
    return "\n".join(lines)


def write(workdir: str | pathlib.Path, report: dict[str, Any]) -> tuple[pathlib.Path, pathlib.Path]:
    """``<workdir>/compile_report.json`` and ``.md`` (the workdir is created); returns their paths."""
    root = pathlib.Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    js, md = root / JSON_FILE, root / MD_FILE
    fileio.write_text(js, json.dumps(report, indent=2) + "\n")
    fileio.write_text(md, f"# Compile-only report: {report['target']}\n\n{table(report)}\n")
    return js, md
