"""Reports of a run: the console table, ``results.json``, the per-puzzle/per-skill plots, the training
curves and the closing summary of where everything went.

The numbers come from :mod:`smartvlm_jax.metrics` (and the run's ``log.jsonl``); this module only presents
and stores them. Plots use matplotlib's object API (Figure + Agg canvas), so no global backend or figure
state.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import pathlib
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from smartvlm_jax import fileio, puzzles
from smartvlm_jax import metrics as metrics_lib
from smartvlm_jax.workdir import Workdir

# Keys of metric dicts whose values are keyed by puzzle id (int in memory, str in JSON).
_PUZZLE_KEYED = ("per_puzzle", "greedy_per_puzzle")


def pct(x: Any) -> str:
    """A fraction as a percentage with one decimal; "-" when absent or NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100.0 * float(x):.1f}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def format_table(
    metrics: Mapping[str, Any],
    skills: Mapping[int, str] | None = None,
    names: Mapping[int, str] | None = None,
) -> str:
    """A markdown table for the console: the overall line, chance, each skill class, the types outside
    the skill classes ("order", so no puzzle drops out of the groups), each puzzle.

    Accuracies are in percent; greedy-baseline columns are filled where `metrics` carries the keys of
    `greedy_baseline` (merge the two dicts). Puzzle rows read "puzzle <id> (<name>; <skill>)": `skills`
    (default: the shipped csv) and `names` (default: none) come from the data root's
    `smart101.read_puzzle_info`, so synthetic families show their own names and stand-in skills.
    """
    skills = metrics_lib.read_skill_types() if skills is None else skills
    names = {} if names is None else names
    per_puzzle = {int(k): v for k, v in metrics.get("per_puzzle", {}).items()}
    greedy_pp = {int(k): v for k, v in metrics.get("greedy_per_puzzle", {}).items()}
    greedy_ps = {**metrics.get("greedy_per_skill", {}), **metrics.get("greedy_per_other_type", {})}
    lines = [
        "| group | n | S_acc % | O_acc % | greedy S_acc % | greedy O_acc % | err |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    err = metrics.get("err")
    err_text = "-" if err is None or math.isnan(err) else f"{err:.3f}"
    lines.append(
        f"| **all** | {metrics.get('n', '-')} | {pct(metrics.get('S_acc'))} | "
        f"{pct(metrics.get('O_acc'))} | "
        f"{pct(metrics.get('greedy_S_acc'))} | {pct(metrics.get('greedy_O_acc'))} | {err_text} |"
    )
    if "chance_S_acc" in metrics:
        lines.append(
            f"| uniform chance | | {pct(metrics['chance_S_acc'])} | {pct(metrics['chance_O_acc'])} | | | |"
        )
    groups = [
        (f"{skill} ({_count(row['num_puzzles'], 'puzzle')})", skill, row)
        for skill, row in metrics.get("per_skill", {}).items()
    ]
    groups += [
        (f"{kind} ({_count(row['num_puzzles'], 'puzzle')}, not a skill class)", kind, row)
        for kind, row in metrics.get("per_other_type", {}).items()
    ]
    for label, key, row in groups:
        g = greedy_ps.get(key, {})
        lines.append(
            f"| {label} | | {pct(row['S_acc'])} | {pct(row['O_acc'])} | "
            f"{pct(g.get('S_acc'))} | {pct(g.get('O_acc'))} | |"
        )
    for pid in sorted(per_puzzle):
        row, g = per_puzzle[pid], greedy_pp.get(pid, {})
        about = "; ".join(x for x in (names.get(pid, ""), skills.get(pid, "?")) if x)
        lines.append(
            f"| puzzle {pid} ({about}) | {row['n']} | {pct(row['S_acc'])} | "
            f"{pct(row['O_acc'])} | {pct(g.get('S_acc'))} | {pct(g.get('O_acc'))} | |"
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
    fileio.write_json(path, content, indent=2, allow_nan=False)
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
    errors: Mapping[str, Sequence[float]] | None = None,
) -> None:
    """Grouped bars (one group per label) plus optional per-group marker lines (e.g. the greedy level) and
    error bars (``errors``: per series, e.g. the standard deviation over seeds)."""
    x = np.arange(len(labels))
    width = 0.8 / max(len(series), 1)
    errors = errors or {}
    for i, (name, values) in enumerate(series.items()):
        ax.bar(
            x + (i - (len(series) - 1) / 2) * width,
            values,
            width,
            label=name,
            yerr=errors.get(name),
            capsize=2 if name in errors else 0,
        )
    for (name, values), color in zip(markers.items(), ("black", "tab:gray", "tab:brown"), strict=False):
        ax.scatter(x, values, marker="_", s=200, color=color, zorder=3, label=name)
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
        f"(all: S_acc {pct(metrics.get('S_acc'))}%, O_acc {pct(metrics.get('O_acc'))}%)"
    )
    paths.append(out.plot(prefix, "puzzle"))
    fig.savefig(paths[-1], dpi=100)

    # The skill classes, then the other types ("order*"): every puzzle is in one group.
    per_skill_rows = {**metrics.get("per_skill", {}), **metrics.get("per_other_type", {})}
    skill_names = list(per_skill_rows)
    rows = [per_skill_rows[s] for s in skill_names]
    greedy_ps = {**metrics.get("greedy_per_skill", {}), **metrics.get("greedy_per_other_type", {})}
    markers = (
        {"greedy S_acc": to_pct([greedy_ps.get(s, {}) for s in skill_names], "S_acc")} if greedy_ps else {}
    )
    others = set(metrics.get("per_other_type", {}))
    labels = [f"{s}*" if s in others else s for s in skill_names]
    fig = Figure(figsize=(7.0, 4.0), layout="constrained")
    ax = fig.subplots()
    _bars(ax, labels, {"S_acc": to_pct(rows, "S_acc"), "O_acc": to_pct(rows, "O_acc")}, markers)
    ax.set_xlabel("skill class (mean over puzzles present)" + ("; * not a skill class" if others else ""))
    ax.set_title(f"{prefix}: per-skill accuracy")
    paths.append(out.plot(prefix, "skill"))
    fig.savefig(paths[-1], dpi=100)
    return paths


def plot_curves(
    series: Mapping[str, Mapping[int, float]],
    steps_per_epoch: int,
    best_epoch: int,
    path: str | os.PathLike[str],
) -> pathlib.Path:
    """Saves the training curves to ``path`` (``Workdir.curves``): train loss against step, and val S_acc
    and O_acc (%) against epoch, the best epoch marked on both.

    ``series``: name -> {step: value}, as ``summaries.read_log`` reads ``log.jsonl`` ("train/loss",
    "val/S_acc", "val/O_acc"); validation runs at each epoch's last step, ``epoch * steps_per_epoch``.
    ``best_epoch`` 0: none marked (no epoch finished). Missing series leave their panel empty.
    """
    fig = Figure(figsize=(11.0, 4.0), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss = series.get("train/loss", {})
    steps = sorted(loss)
    loss_ax.plot(steps, [loss[s] for s in steps], color="tab:blue", lw=1.5, label="train loss")
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("train loss (mean over each logged window)")
    loss_ax.grid(alpha=0.3)
    for name, style in (("val/S_acc", "o-"), ("val/O_acc", "s--")):
        values = series.get(name, {})
        at = sorted(values)
        acc_ax.plot(
            [s / steps_per_epoch for s in at],
            [100.0 * float(values[s]) for s in at],
            style,
            label=name.removeprefix("val/"),
        )
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("accuracy %")
    acc_ax.set_title("validation")
    acc_ax.grid(alpha=0.3)
    best_s = series.get("val/S_acc", {}).get(best_epoch * steps_per_epoch)
    if best_epoch > 0:
        best_step = best_epoch * steps_per_epoch
        loss_ax.axvline(best_step, color="tab:red", ls=":", label=f"best epoch {best_epoch}")
        acc_ax.axvline(best_epoch, color="tab:red", ls=":")
        if best_s is not None:
            acc_ax.scatter(
                [best_epoch],
                [100.0 * best_s],
                s=160,
                marker="*",
                color="tab:red",
                zorder=3,
                label=f"best: epoch {best_epoch}, S_acc {pct(best_s)} %",
            )
    loss_ax.legend(fontsize=8)
    if acc_ax.lines:
        acc_ax.legend(fontsize=8, loc="lower right")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def format_summary(results: Mapping[str, Any], workdir: str | os.PathLike[str], split: str = "test") -> str:
    """The lines that end a run: the best epoch and the split's accuracies, then the path of each output
    the workdir holds (results.json, plots, curves, report page, best model, TensorBoard's command, run.log;
    each quoted for a POSIX shell where it needs it: ``shlex.quote``) and what XLA compiled or loaded from
    the compilation cache (``results["xla"]``)."""
    wd = Workdir(workdir)
    m = results.get(split) or {}
    best, epochs = results.get("best_epoch", 0), results.get("epochs")
    val = results.get("val") or {}
    head = f"best epoch {best}" + (f" of {epochs}" if epochs else "")
    if val.get("S_acc") is not None:
        head += f" (val S_acc {pct(val['S_acc'])} %)"
    head += f"; {split} S_acc {pct(m.get('S_acc'))} %, O_acc {pct(m.get('O_acc'))} %"
    if m.get("greedy_S_acc") is not None:
        head += f" (greedy {pct(m['greedy_S_acc'])} %, {pct(m.get('greedy_O_acc'))} %)"
    plots = [wd.plot(split, g) for g in ("puzzle", "skill")]
    outputs = [
        ("results", [wd.results]),
        ("plots", plots),
        ("curves", [wd.curves]),
        ("report", [wd.report]),
        ("best model", [wd.best_model]),
        ("TensorBoard", [wd.tensorboard]),
        ("run log", [wd.run_log()]),
    ]
    lines = [head]
    for label, paths in outputs:
        present = [p for p in paths if p.exists()]
        if present:
            shown = ", ".join(shlex.quote(str(p)) for p in present)  # a path with a space copies whole
            command = "tensorboard --logdir " if label == "TensorBoard" else ""
            lines.append(f"  {label + ':':13}{command}{shown}")
    xla = results.get("xla")
    if xla:
        where = f" ({xla['cache_dir']})" if xla.get("cache_dir") else " (compilation cache off)"
        lines.append(
            f"  {'XLA:':13}{_count(xla['compiled'], 'program')} compiled in {xla['compile_seconds']:.1f} s, "
            f"{xla['loaded']} loaded from the compilation cache{where}"
        )
    return "\n".join(lines)


def report(
    workdir: str | os.PathLike[str],
    split: str,
    metrics: Mapping[str, Any],
    plots: bool = True,
    skills: Mapping[int, str] | None = None,
    names: Mapping[int, str] | None = None,
) -> str:
    """For the trainer and the CLI: writes results.json (merging splits) and the split's plots.

    Returns the console table (puzzles labelled with ``skills`` and ``names``, see :func:`format_table`).
    """
    write_results(workdir, {split: metrics})
    if plots:
        plot_results(metrics, workdir, prefix=split)
    return format_table(metrics, skills, names)


# ----------------------------------------------------------------------------------------------------
# A sweep's table: configurations (rows) over their members (seeds), beside the greedy and chance rows.


@dataclasses.dataclass(frozen=True)
class TableRow:
    """One row of a sweep's table: a configuration's accuracies over its members, or a reference row.

    ``cells``: (metric, group) -> (mean, std), accuracies as fractions (metric "S_acc"/"O_acc", group
    "all" or a skill class or other type, as ``metrics.group_accuracies`` keys them); std is NaN for one
    member and for the reference rows. ``members``: how many were averaged (0: greedy or chance).
    """

    label: str
    members: int
    cells: Mapping[tuple[str, str], tuple[float, float]]


def sweep_rows(
    configurations: Mapping[str, Sequence[Mapping[str, Any]]], split: str = "test"
) -> list[TableRow]:
    """The table's rows: each configuration's mean and std over its members' ``results.json`` (label ->
    the members' results), then "greedy" and "chance" from the first member's split (every member of a
    sweep sees the same data, so their baselines are the same). ValueError names a member without
    ``split``."""
    rows = []
    first = None
    for label, members in configurations.items():
        splits = []
        for i, results in enumerate(members):
            if not results.get(split):
                raise ValueError(f"row {label!r}: member {i} has no {split!r} results")
            splits.append(results[split])
        first = first or splits[0]
        values = [metrics_lib.group_accuracies(m) for m in splits]
        rows.append(TableRow(label, len(splits), metrics_lib.mean_and_std(values)))
    for prefix in ("greedy_", "chance_"):
        values = metrics_lib.group_accuracies(first or {}, prefix)
        if values:
            rows.append(TableRow(prefix.rstrip("_"), 0, {k: (v, math.nan) for k, v in values.items()}))
    return rows


def table_groups(rows: Sequence[TableRow]) -> list[str]:
    """The table's column groups: "all", the skill classes present (the paper's order), then other types."""
    present = {group for row in rows for _, group in row.cells}
    skills = [g for g in puzzles.SKILL_CLASSES if g in present]
    others = sorted(present - set(skills) - {metrics_lib.OVERALL})
    return [metrics_lib.OVERALL, *skills, *others]


def format_cell(value: tuple[float, float] | None) -> str:
    """ "29.9 ± 1.2" (percent); the mean alone without a std; "-" when absent."""
    if value is None:
        return "-"
    mean, std = value
    return pct(mean) if math.isnan(std) else f"{pct(mean)} ± {pct(std)}"


def format_sweep_table(rows: Sequence[TableRow], title: str = "") -> str:
    """Markdown: one table for S_acc and one for O_acc; rows are configurations (mean ± sample std over
    their members, in percent) then greedy and chance; columns "all" and each skill class (the mean over
    its puzzles, as in the SMARTER paper's tables), types outside the skill classes marked with *."""
    groups = table_groups(rows)
    skill_set = set(puzzles.SKILL_CLASSES) | {metrics_lib.OVERALL}
    header = [g if g in skill_set else f"{g}*" for g in groups]
    lines = [f"# {title}", ""] if title else []
    for metric in ("S_acc", "O_acc"):
        lines += [
            f"## {metric} %",
            "",
            "| row | seeds | " + " | ".join(header) + " |",
            "|---|---:|" + "---:|" * len(groups),
        ]
        for row in rows:
            cells = [format_cell(row.cells.get((metric, g))) for g in groups]
            lines.append(f"| {row.label} | {row.members or '-'} | " + " | ".join(cells) + " |")
        lines.append("")
    if any(g not in skill_set for g in groups):
        lines.append("\\* not one of the eight skill classes (its puzzles' type, e.g. order)")
        lines.append("")
    return "\n".join(lines)


def write_sweep_csv(rows: Sequence[TableRow], path: str | os.PathLike[str]) -> pathlib.Path:
    """The table in long form: row, members, metric, group, mean, std (fractions; std empty when none)."""
    path = pathlib.Path(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["row", "members", "metric", "group", "mean", "std"])
        for row in rows:
            for (metric, group), (mean, std) in row.cells.items():
                spread = "" if math.isnan(std) else f"{std:.6f}"
                out.writerow([row.label, row.members, metric, group, f"{mean:.6f}", spread])
    return path


def plot_sweep_table(rows: Sequence[TableRow], path: str | os.PathLike[str], title: str = "") -> pathlib.Path:
    """``table.png``: S_acc and O_acc per group, a bar per configuration with its std over members as an
    error bar; greedy and chance as ticks."""
    groups = table_groups(rows)
    configs = [r for r in rows if r.members]
    refs = [r for r in rows if not r.members]
    width = max(7.0, 0.4 * len(groups) * max(1, len(configs)) + 3.0)
    fig = Figure(figsize=(width, 7.5), layout="constrained")
    for ax, metric in zip(fig.subplots(2, 1), ("S_acc", "O_acc"), strict=True):

        def pct(row: TableRow, i: int, metric: str = metric) -> list[float]:
            return [100.0 * row.cells.get((metric, g), (math.nan, math.nan))[i] for g in groups]

        series = {r.label: pct(r, 0) for r in configs}
        errors = {r.label: [0.0 if math.isnan(e) else e for e in pct(r, 1)] for r in configs}
        _bars(ax, groups, series, {}, legend=False, errors=errors)
        x = np.arange(len(groups))
        for ref, (style, color) in zip(refs, (("--", "black"), (":", "tab:gray")), strict=False):
            # a level across the whole group, so it reads as the group's, not as one bar's
            levels = pct(ref, 0)
            ax.hlines(levels, x - 0.42, x + 0.42, colors=color, linestyles=style, lw=1.5, label=ref.label)
        ax.legend(fontsize=8, loc="upper right", ncols=3)
        ax.set_title(metric)
    if title:
        fig.suptitle(title)
    path = pathlib.Path(path)
    fig.savefig(path, dpi=100)
    return path
