"""Reports of evaluation results: the console table, ``results.json`` and the per-puzzle/per-skill plots.

The numbers come from :mod:`smartvlm_jax.metrics`; this module only presents and stores them. Plots use
matplotlib's object API (Figure + Agg canvas), so no global backend or figure state.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from smartvlm_jax import metrics as metrics_lib
from smartvlm_jax.workdir import Workdir

# Keys of metric dicts whose values are keyed by puzzle id (int in memory, str in JSON).
_PUZZLE_KEYED = ("per_puzzle", "greedy_per_puzzle")


def _pct(x: Any) -> str:
    """A fraction as a percentage with one decimal; "-" when absent or NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100.0 * float(x):.1f}"


def format_table(metrics: Mapping[str, Any], skills: Mapping[int, str] | None = None) -> str:
    """A markdown table for the console: the overall line, chance, each skill class, each puzzle.

    Accuracies are in percent; greedy-baseline columns are filled where `metrics` carries the keys of
    `greedy_baseline` (merge the two dicts). `skills` (default: the shipped csv) labels puzzle rows.
    """
    skills = metrics_lib.read_skill_types() if skills is None else skills
    per_puzzle = {int(k): v for k, v in metrics.get("per_puzzle", {}).items()}
    greedy_pp = {int(k): v for k, v in metrics.get("greedy_per_puzzle", {}).items()}
    greedy_ps = metrics.get("greedy_per_skill", {})
    lines = [
        "| group | n | S_acc % | O_acc % | greedy S_acc % | greedy O_acc % | err |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    err = metrics.get("err")
    err_text = "-" if err is None or math.isnan(err) else f"{err:.3f}"
    lines.append(
        f"| **all** | {metrics.get('n', '-')} | {_pct(metrics.get('S_acc'))} | "
        f"{_pct(metrics.get('O_acc'))} | "
        f"{_pct(metrics.get('greedy_S_acc'))} | {_pct(metrics.get('greedy_O_acc'))} | {err_text} |"
    )
    if "chance_S_acc" in metrics:
        lines.append(
            f"| uniform chance | | {_pct(metrics['chance_S_acc'])} | {_pct(metrics['chance_O_acc'])} | | | |"
        )
    for skill, row in metrics.get("per_skill", {}).items():
        g = greedy_ps.get(skill, {})
        lines.append(
            f"| {skill} ({row['num_puzzles']} puzzles) | | {_pct(row['S_acc'])} | {_pct(row['O_acc'])} | "
            f"{_pct(g.get('S_acc'))} | {_pct(g.get('O_acc'))} | |"
        )
    for pid in sorted(per_puzzle):
        row, g = per_puzzle[pid], greedy_pp.get(pid, {})
        lines.append(
            f"| puzzle {pid} ({skills.get(pid, '?')}) | {row['n']} | {_pct(row['S_acc'])} | "
            f"{_pct(row['O_acc'])} | {_pct(g.get('S_acc'))} | {_pct(g.get('O_acc'))} | |"
        )
    return "\n".join(lines)


def to_json_safe(obj: Any) -> Any:
    """A copy of `obj` that `json.dump` writes as strict JSON.

    int keys -> str, numpy scalars and arrays -> Python, NaN/inf -> null (strict JSON has no NaN).
    """
    if isinstance(obj, Mapping):
        return {str(k): to_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return to_json_safe(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [to_json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def _restore_int_keys(obj: Any) -> Any:
    """Inverse of the key conversion of `to_json_safe` for the puzzle-keyed tables (nested anywhere)."""
    if isinstance(obj, dict):
        return {
            k: (
                {int(pk): pv for pk, pv in v.items()}
                if k in _PUZZLE_KEYED and isinstance(v, dict)
                else _restore_int_keys(v)
            )
            for k, v in obj.items()
        }
    return obj


def write_results(
    workdir: str | os.PathLike[str], results: Mapping[str, Mapping[str, Any]], merge: bool = True
) -> pathlib.Path:
    """Writes `workdir/results.json` ({"val": metrics, "test": metrics, ...}) and returns its path.

    With `merge`, splits already in the file and not in `results` are kept, so re-evaluating one split
    does not erase the other. The write goes through a temporary file and a rename, so a killed run never
    leaves a truncated results.json.
    """
    path = Workdir(workdir).results
    path.parent.mkdir(parents=True, exist_ok=True)
    content: dict[str, Any] = {}
    if merge and path.exists():
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    content.update(to_json_safe(results))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


def load_results(workdir: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads `workdir/results.json`, with the per-puzzle tables keyed by int puzzle id again."""
    with open(Workdir(workdir).results, encoding="utf-8") as f:
        return _restore_int_keys(json.load(f))


PUZZLES_PER_PANEL = 34


def _bars(
    ax: Any,
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    markers: Mapping[str, Sequence[float]],
    legend: bool = True,
) -> None:
    """Grouped bars (one group per label) plus optional per-group marker lines (e.g. the greedy level)."""
    x = np.arange(len(labels))
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
    for name, values in markers.items():
        ax.scatter(x, values, marker="_", s=200, color="black", zorder=3, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=90 if len(labels) > 40 else 0, fontsize=8 if len(labels) > 20 else 9)
    ax.set_ylim(0, 100)
    ax.margins(x=0.01)  # many groups: keep the side padding to about one bar
    ax.set_ylabel("accuracy %")
    ax.grid(axis="y", alpha=0.3)
    if legend:
        ax.legend(fontsize=8, loc="upper right", ncols=3)


def plot_results(
    metrics: Mapping[str, Any], out_dir: str | os.PathLike[str], prefix: str = "test"
) -> list[pathlib.Path]:
    """Saves `<prefix>_per_puzzle.png` and `<prefix>_per_skill.png` (S_acc and O_acc bars) in `out_dir`.

    The greedy baseline's S_acc is drawn as a black tick per bar group where `metrics` carries it. Uses
    matplotlib's object API (Figure + Agg canvas) rather than pyplot, so no global backend or figure state.
    """
    out = Workdir(out_dir)
    out.root.mkdir(parents=True, exist_ok=True)
    to_pct = lambda rows, key: [100.0 * float(r[key]) if r.get(key) is not None else math.nan for r in rows]
    paths = []

    per_puzzle = {int(k): v for k, v in metrics.get("per_puzzle", {}).items()}
    pids = sorted(per_puzzle)
    rows = [per_puzzle[p] for p in pids]
    greedy_pp = {int(k): v for k, v in metrics.get("greedy_per_puzzle", {}).items()}
    greedy = to_pct([greedy_pp.get(p, {}) for p in pids], "S_acc") if greedy_pp else []
    # Up to PUZZLES_PER_PANEL bars a row: all 101 puzzles take 3 rows of readable, unrotated ids.
    panels = max(1, math.ceil(len(pids) / PUZZLES_PER_PANEL))
    per_panel = math.ceil(len(pids) / panels) if pids else 1
    width = max(6.0, 0.38 * min(len(pids), per_panel) + 2.0)
    fig = Figure(figsize=(width, 1.0 + 3.0 * panels), layout="constrained")
    for i, ax in enumerate(np.atleast_1d(fig.subplots(panels, 1))):
        part = slice(i * per_panel, (i + 1) * per_panel)
        markers = {"greedy S_acc": greedy[part]} if greedy else {}
        series = {"S_acc": to_pct(rows[part], "S_acc"), "O_acc": to_pct(rows[part], "O_acc")}
        _bars(ax, [str(p) for p in pids[part]], series, markers, legend=i == 0)
    ax.set_xlabel("puzzle id")
    fig.suptitle(
        f"{prefix}: per-puzzle accuracy "
        f"(all: S_acc {_pct(metrics.get('S_acc'))}%, O_acc {_pct(metrics.get('O_acc'))}%)"
    )
    paths.append(out.plot(prefix, "puzzle"))
    fig.savefig(paths[-1], dpi=100)

    per_skill_rows = metrics.get("per_skill", {})
    skill_names = list(per_skill_rows)
    rows = [per_skill_rows[s] for s in skill_names]
    greedy_ps = metrics.get("greedy_per_skill", {})
    markers = (
        {"greedy S_acc": to_pct([greedy_ps.get(s, {}) for s in skill_names], "S_acc")} if greedy_ps else {}
    )
    fig = Figure(figsize=(7.0, 4.0), layout="constrained")
    ax = fig.subplots()
    _bars(ax, skill_names, {"S_acc": to_pct(rows, "S_acc"), "O_acc": to_pct(rows, "O_acc")}, markers)
    ax.set_xlabel("skill class (mean over puzzles present)")
    ax.set_title(f"{prefix}: per-skill accuracy")
    paths.append(out.plot(prefix, "skill"))
    fig.savefig(paths[-1], dpi=100)
    return paths


def report(
    workdir: str | os.PathLike[str], split: str, metrics: Mapping[str, Any], plots: bool = True
) -> str:
    """For the trainer and the CLI: writes results.json (merging splits) and the split's plots.

    Returns the console table.
    """
    write_results(workdir, {split: metrics})
    if plots:
        plot_results(metrics, workdir, prefix=split)
    return format_table(metrics)
