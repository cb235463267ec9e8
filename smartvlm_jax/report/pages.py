"""The report pages: ``report.html`` of a run workdir and of a sweep workdir, rendered with Jinja2 from
the package's templates (``smartvlm_jax/report/templates``).

A page is one self-contained HTML file: styles, the filtering script, the plots the run drew (PNG) and the
gallery's thumbnails (WebP) are all inlined as ``data:`` URIs, so it opens from disk, needs no server and
loads nothing from the network. What each page shows: docs/report.md.
"""

from __future__ import annotations

import base64
import csv
import datetime
import importlib
import json
import math
import os
import pathlib
import shlex
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
import numpy as np

from smartvlm_jax import cli, features, fileio, puzzles, reports, summaries
from smartvlm_jax.data import smart101
from smartvlm_jax.reasoner import config as head_config
from smartvlm_jax.report import predictions as predictions_lib
from smartvlm_jax.report import thumbnails
from smartvlm_jax.workdir import Workdir

PAGE = "report.html"
# The gallery holds every test instance up to this many cards; a larger split shows a random sample of
# the same number of instances from every puzzle (the tables cover the whole split). ~2,000 thumbnails
# keep a 101-puzzle page near 10 MB.
MAX_CARDS = 2000
SAMPLE_SEED = 0


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("smartvlm_jax.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a name the code forgot to pass fails the render, not the reader
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = reports.pct
    env.filters["shell_quote"] = shlex.quote  # a command the reader copies into a shell
    return env


def _png_uri(path: pathlib.Path) -> str | None:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode() if path.is_file() else None


def _figure_uri(draw) -> str | None:
    """A plot drawn by ``draw(folder) -> path`` (the reports module's functions write files) as a PNG data
    URI."""
    with tempfile.TemporaryDirectory() as tmp:
        return _png_uri(pathlib.Path(draw(pathlib.Path(tmp))))


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# Run-config fields no config file sets: setup resolves them from the data (puzzles, C_p) and towers (widths)
DERIVED_FIELDS = ("model.puzzle_ids", "model.num_classes", "model.vision_dim", "model.text_dim")


def config_difference(run_config: Mapping[str, Any]) -> tuple[str, list[tuple[str, str, str]]]:
    """(where the base came from or why there is none, [(field, run value, base value)]): the resolved
    run config's fields that differ from ``configs/smarter.py`` (the paper's model and recipe), the base
    every config in ``configs/`` is written against. Values are shown as JSON."""
    try:
        base = importlib.import_module(cli.BASE_CONFIG).get_config().to_dict()
    except ImportError as e:
        return f"no base config to compare with ({cli.BASE_CONFIG}: {e})", []
    run, ref = _flatten(run_config), _flatten(json.loads(json.dumps(base, default=str)))
    shown = {key: json.dumps(value, ensure_ascii=False) for key, value in ref.items()}  # "ü", not \u00fc
    for key in DERIVED_FIELDS:  # a config leaves them empty; the run fills them in from its data and towers
        if key in ref:
            ref[key] = shown[key] = "(from the data and towers)"
    missing = object()
    rows = [
        (key, json.dumps(run.get(key, "(absent)"), ensure_ascii=False), shown.get(key, "(absent)"))
        for key in sorted(set(run) | set(ref))
        if run.get(key, missing) != ref.get(key, missing)
    ]
    return "configs/smarter.py", rows


# ----------------------------------------------------------------------------------------------------
# The run page


def _answer_text(pid: int, values: np.ndarray, options: Sequence[str], option_values: np.ndarray) -> str:
    """An answer as the puzzle's options write it: a sequence's values up to its padding, an option's
    text where the value is an option's, else the number. ``values``: int [K] (a sequence) or [>= 1] (its
    first entry is the value); ``option_values``: int [5, K], encoded like the labels."""
    if puzzles.is_sequence(pid):
        pad = int(option_values[0, -1]) if option_values.size else None
        shown = [int(v) for v in values]
        while shown and shown[-1] == pad:
            shown.pop()
        return ", ".join(map(str, shown)) or "(empty)"
    value = int(values[0])
    for text, ov in zip(options, option_values, strict=False):
        if int(ov[0]) == value and text:
            return str(text)
    return str(value)


def gallery_sample(pids: np.ndarray, max_cards: int) -> np.ndarray:
    """Indices into ``pids`` (int [N], the split's puzzle ids) of the gallery's instances, int64 [M],
    ascending (split order): all N, or (N > ``max_cards``) the same number drawn at random from every
    puzzle, max(1, max_cards // puzzles) each (seeded: the same cards on every rewrite)."""
    if len(pids) <= max_cards:
        return np.arange(len(pids))
    rng = np.random.default_rng(SAMPLE_SEED)
    unique = np.unique(pids)
    quota = max(1, max_cards // len(unique))
    chosen = [rng.permutation(np.flatnonzero(pids == p))[:quota] for p in unique]
    return np.sort(np.concatenate(chosen))


def _cards(
    pred: Mapping[str, np.ndarray],
    rows: Mapping[tuple[int, int], smart101.Row],
    info: Mapping[int, smart101.PuzzleInfo],
    chosen: np.ndarray,
    thumbs: thumbnails.Cache,
) -> list[dict[str, Any]]:
    """The gallery's cards as the page's script reads them (short keys: thousands of cards)."""
    letters = smart101.OPTION_LETTERS
    cards = []
    for i in chosen.tolist():
        pid, iid = int(pred["puzzle_ids"][i]), int(pred["instance_ids"][i])
        row = rows.get((pid, iid))
        options = list(row.options) if row else [""] * len(letters)
        if row and not options[0].strip():  # the reader's rule: no options -> they are the letters
            options = list(letters)
        ov = pred["option_values"][i]
        text = lambda values, pid=pid, options=options, ov=ov: _answer_text(pid, values, options, ov)
        chosen_option = int(pred["option_index"][i])
        card = {
            "p": pid,
            "i": iid,
            "s": info[pid].type if pid in info else "?",
            "q": row.question if row else "",
            "o": options,
            "a": letters[int(pred["answer_index"][i])],
            "t": text(pred["labels"][i]),
            "y": text(pred["preds"][i]),
            "l": letters[chosen_option] if chosen_option >= 0 else "",
            "ok": bool(pred["s_correct"][i]),
            "ook": bool(pred["o_correct"][i]),
            "c": round(float(pred["confidence"][i]), 4),
            "img": thumbs.get(row.image_path) if row else None,
        }
        if puzzles.is_sequence(pid):
            length = len(card["t"].split(", "))
            card["k"] = [
                [int(v), int(t), round(float(p), 3)]
                for v, t, p in zip(
                    pred["preds"][i][:length],
                    pred["labels"][i][:length],
                    pred["top_probs"][i][:length, 0],
                    strict=True,
                )
            ]
        else:
            card["k"] = [
                [_answer_text(pid, np.array([v]), options, ov), round(float(p), 3)]
                for v, p in zip(pred["top_values"][i, 0], pred["top_probs"][i, 0], strict=True)
            ]
        cards.append(card)
    return cards


def sequence_errors(pred: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per sequence puzzle present, by id: n, exact-match accuracy, the accuracy of each decode position up
    to the longest answer (over every row, as exact match and the reference's S_acc score all K: a row
    exactly right is right at each position) and, over the wrong answers, how many first go wrong at each
    position. Accuracies are fractions in [0, 1]. An answer's length is up to its last value other than
    the pad value (SPEC 2): a pad-valued value inside an answer (puzzle 63 pads with C_63 - 1, a real count)
    is part of it; one at its end cannot be told from padding.

    ``pred``: "puzzle_ids" int [N], "labels" and "preds" int [N, K], "option_values" int [N, 5, K] (the
    predictions file's fields, :mod:`smartvlm_jax.report.predictions`).
    """
    out = []
    for pid in sorted({int(p) for p in pred["puzzle_ids"]} & puzzles.SEQUENCE_PUZZLES):
        at = pred["puzzle_ids"] == pid
        labels, preds = pred["labels"][at], pred["preds"][at]
        pad = pred["option_values"][at][:, 0, -1][:, None]
        valued = labels != pad
        ends = np.where(valued.any(axis=1), valued.shape[1] - np.argmax(valued[:, ::-1], axis=1), 0)
        length = int(ends.max()) if ends.size else 0
        right = preds == labels
        wrong = ~right.all(axis=1)
        first = np.argmax(~right, axis=1)[wrong]
        out.append(
            {
                "puzzle": pid,
                "n": int(at.sum()),
                "exact": float(right.all(axis=1).mean()),
                "length": length,
                "position_acc": [float(right[:, k].mean()) for k in range(length)],
                "first_wrong": np.bincount(first, minlength=puzzles.NUM_DECODE_STEPS)[
                    : max(length, 1)
                ].tolist(),
                "first_wrong_after": int((first >= max(length, 1)).sum()),  # in the padding after the answer
                "wrong": int(wrong.sum()),
            }
        )
    return out


def _puzzle_info(root: str) -> dict[int, smart101.PuzzleInfo]:
    """Names and skills of the puzzles: the data root's (synthetic families name theirs) when it is here."""
    return smart101.read_puzzle_info(root if root and os.path.isdir(root) else None)


def _steps_per_epoch(results: Mapping[str, Any]) -> int | None:
    steps, epochs = results.get("steps"), results.get("epochs")
    return int(steps) // int(epochs) if steps and epochs else None


def _now() -> str:
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def _gallery(
    wd: Workdir,
    split: str,
    root: str,
    info: Mapping[int, smart101.PuzzleInfo],
    metrics: Mapping[str, Any],
    max_cards: int,
    thumbs: thumbnails.Cache,
) -> dict[str, Any]:
    """The page's keys that come from the predictions file: "cards", "sequences", "n_split", "skills",
    "predictions_file" and "notes" (what the gallery lacks, and why). Without stored features: no cards,
    and a note that says so."""
    try:
        pred = predictions_lib.ensure(wd, split)
    except predictions_lib.NoFeaturesError as e:
        note = (
            f"no gallery: {e}. The page shows only what results.json holds; the towers are not run "
            "for a report (train with --config.cache_features=True to have one)"
        )
        empty = {"cards": [], "sequences": [], "skills": [], "predictions_file": ""}
        return {**empty, "n_split": int(metrics.get("n", 0)), "notes": [note]}
    notes: list[str] = []
    n_split = len(pred["puzzle_ids"])
    s_acc = float(np.mean(pred["s_correct"])) if n_split else math.nan
    if metrics.get("S_acc") is not None and abs(s_acc - metrics["S_acc"]) > 1e-9:
        notes.append(
            f"the predictions give S_acc {reports.pct(s_acc)} %, results.json "
            f"{reports.pct(metrics['S_acc'])} %: it is another model's"
        )
    pids_present = sorted({int(p) for p in pred["puzzle_ids"]})
    rows: dict[tuple[int, int], smart101.Row] = {}
    if root and os.path.isdir(root):
        rows = {(r.puzzle_id, r.instance_id): r for r in smart101.read_rows(root, pids_present)}
    else:
        notes.append(f"the data root {root!r} is not here: cards show no image, question or options")
    chosen = gallery_sample(pred["puzzle_ids"], max_cards)
    cards = _cards(pred, rows, info, chosen, thumbs)
    if len(chosen) < n_split:
        quota = len(chosen) // len(pids_present)
        notes.append(
            f"the gallery shows {len(chosen):,} of the {n_split:,} {split} instances: a random "
            f"sample of {quota} per puzzle (the tables cover all)"
        )
    missing = sum(c["img"] is None for c in cards)
    if missing and rows:
        example = next(iter(thumbs.errors.values()), "")
        notes.append(f"{missing} images could not be read (e.g. {example})")
    return {
        "cards": cards,
        "sequences": sequence_errors(pred),
        "n_split": n_split,
        "skills": sorted({c["s"] for c in cards}),
        "predictions_file": str(predictions_lib.path(wd, split)),
        "notes": notes,
    }


def _puzzle_rows(metrics: Mapping[str, Any], info: Mapping[int, smart101.PuzzleInfo]) -> list[dict[str, Any]]:
    """The per-puzzle table: a row per puzzle in the split's results, by puzzle id; accuracies are
    fractions (None where the greedy baseline was not computed)."""
    greedy = metrics.get("greedy_per_puzzle", {})
    return [
        {
            "puzzle": pid,
            "name": info[pid].name if pid in info else "",
            "skill": info[pid].type if pid in info else "?",
            "n": row["n"],
            "S_acc": row["S_acc"],
            "O_acc": row["O_acc"],
            "greedy_S_acc": greedy.get(pid, {}).get("S_acc"),
        }
        for pid, row in sorted(metrics.get("per_puzzle", {}).items())
    ]


def _skill_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The per-skill table: the skill classes, then the other puzzle types (``"other": True``)."""
    greedy = {**metrics.get("greedy_per_skill", {}), **metrics.get("greedy_per_other_type", {})}
    groups = ((False, metrics.get("per_skill", {})), (True, metrics.get("per_other_type", {})))
    return [
        {
            "skill": skill,
            "other": other,
            "num_puzzles": row["num_puzzles"],
            "S_acc": row["S_acc"],
            "O_acc": row["O_acc"],
            "greedy_S_acc": greedy.get(skill, {}).get("S_acc"),
        }
        for other, group in groups
        for skill, row in group.items()
    ]


def _plots(
    wd: Workdir, results: Mapping[str, Any], metrics: Mapping[str, Any], split: str, draw_plots: bool
) -> dict[str, str | None]:
    """The plots as PNG data URIs (keys "curves", "per_puzzle_png", "per_skill_png"): the run's own
    files, else (with ``draw_plots``) drawn now from its log and results, else None."""
    curves = _png_uri(wd.curves)
    steps_per_epoch = _steps_per_epoch(results)
    if curves is None and draw_plots and wd.log.is_file() and steps_per_epoch:  # a sweep member drew none
        series = summaries.read_log(wd.log)
        best = int(results.get("best_epoch", 0))
        curves = _figure_uri(lambda d: reports.plot_curves(series, steps_per_epoch, best, d / "curves.png"))
    per_puzzle, per_skill = _png_uri(wd.plot(split, "puzzle")), _png_uri(wd.plot(split, "skill"))
    if (per_puzzle is None or per_skill is None) and draw_plots and metrics:
        with tempfile.TemporaryDirectory() as tmp:
            per_puzzle, per_skill = map(_png_uri, reports.plot_results(metrics, tmp, prefix=split))
    return {"curves": curves, "per_puzzle_png": per_puzzle, "per_skill_png": per_skill}


def _headline(metrics: Mapping[str, Any], results: Mapping[str, Any]) -> dict[str, Any]:
    """The page's first lines: the split's accuracies (fractions), their baselines, n and the epochs."""
    keys = ("S_acc", "O_acc", "greedy_S_acc", "greedy_O_acc", "chance_S_acc", "chance_O_acc", "err", "n")
    return {
        **{key: metrics.get(key) for key in keys},
        "best_epoch": results.get("best_epoch"),
        "epochs": results.get("epochs"),
        "val_S_acc": (results.get("val") or {}).get("S_acc"),
    }


def _data_section(wd: Workdir, config: Mapping[str, Any], num_puzzles: int) -> dict[str, Any]:
    """The data the run read: root, split type and ratio, and each split's rows as its features record
    counts them (none without stored features)."""
    data = config.get("data", {})
    sizes = {}
    record = predictions_lib.record_dir(wd)
    if record is not None:
        splits = json.loads((record / features.RECORD_FILE).read_text()).get("splits", {})
        sizes = {s: v.get("rows") for s, v in splits.items()}
    return {
        "root": data.get("root", "") or "(none)",
        "split_type": data.get("split_type", "?"),
        "ratio": data.get("ratio"),
        "puzzles": num_puzzles,
        "sizes": sizes,
        "synthetic": bool(config.get("synthetic", {}).get("enabled")),
    }


def _towers_section(config: Mapping[str, Any]) -> dict[str, Any]:
    """The feature variant and the towers that made the features. Older run configs name the variant
    ``model.features``; :func:`head_config.upgrade` reads them under the current name."""
    towers = config.get("towers", {})
    return {
        "variant": head_config.upgrade(config.get("model", {})).get("variant", "?"),
        "tiny": bool(towers.get("tiny")),
        "dinov2": towers.get("dinov2", ""),
        "siglip": towers.get("siglip", ""),
        "dtype": towers.get("dtype", "?"),
    }


def run_context(
    workdir: str | os.PathLike,
    *,
    split: str = "test",
    max_cards: int = MAX_CARDS,
    thumbs: thumbnails.Cache | None = None,
    links: Mapping[str, str] | None = None,
    draw_plots: bool = True,
) -> dict[str, Any]:
    """Everything ``run.html.j2`` shows, from the workdir alone (arguments: :func:`write_run_page`).

    Accuracies are fractions in [0, 1] (the template shows percentages); images are ``data:`` URIs or
    None. Raises FileNotFoundError when ``workdir`` is not a finished training workdir.
    """
    wd = Workdir(workdir)
    config = wd.run_config()
    if config is None or not wd.results.is_file():
        raise FileNotFoundError(
            f"{wd.root} is not a finished training workdir (it needs config.json, best_model/, results.json)"
        )
    results = reports.load_results(wd)
    metrics = results.get(split) or {}
    root = config.get("data", {}).get("root", "")
    info = _puzzle_info(root)
    gallery = _gallery(wd, split, root, info, metrics, max_cards, thumbs or thumbnails.Cache())
    puzzle_rows = _puzzle_rows(metrics, info)
    base, difference = config_difference(config)
    return {
        # a sweep member is named by its row too ("smarter/seed_0")
        "title": f"{wd.root.parent.name + '/' if links else ''}{wd.root.name}: {split} report",
        "workdir": str(wd.root),
        "split": split,
        "generated": _now(),
        "headline": _headline(metrics, results),
        "data": _data_section(wd, config, len(puzzle_rows)),
        "towers": _towers_section(config),
        "base_config": base,
        "difference": difference,
        **_plots(wd, results, metrics, split, draw_plots),
        "skill_rows": _skill_rows(metrics),
        "puzzle_rows": puzzle_rows,
        "puzzle_names": {str(p["puzzle"]): p["name"] for p in puzzle_rows},
        "links": dict(links or {}),
        **gallery,
    }


def write_run_page(
    workdir: str | os.PathLike,
    *,
    split: str = "test",
    max_cards: int = MAX_CARDS,
    thumbs: thumbnails.Cache | None = None,
    links: Mapping[str, str] | None = None,
    draw_plots: bool = True,
) -> pathlib.Path:
    """Writes ``<workdir>/report.html`` for a finished run (or an evaluated one) and returns its path.

    The page shows ``split``'s results (results.json), the curves, per-skill and per-puzzle accuracy, the
    positions where sequence answers go wrong, and a gallery of the split's instances with the model's
    answers, which come from ``<workdir>/<split>_predictions.npz`` (computed first when absent or stale:
    the best model's head on the stored features, no towers). A run without stored features gets a page
    without a gallery that says so. At most ``max_cards`` cards (a per-puzzle sample beyond). ``thumbs``
    shares thumbnails between pages; ``links``: label -> href shown at the top (a sweep's page).
    ``draw_plots``: draw the plots the run did not (a sweep member's, ~1 s each), else leave them out.

    Raises FileNotFoundError when ``workdir`` is not a finished training workdir.
    """
    context = run_context(
        workdir, split=split, max_cards=max_cards, thumbs=thumbs, links=links, draw_plots=draw_plots
    )
    return _write(Workdir(workdir).report, "run.html.j2", context)


def _write(path: pathlib.Path, template: str, context: Mapping[str, Any]) -> pathlib.Path:
    fileio.write_text(path, _environment().get_template(template).render(**context))
    return path


# ----------------------------------------------------------------------------------------------------
# The sweep page


def is_sweep(workdir: str | os.PathLike) -> bool:
    """A sweep workdir holds ``sweep.json`` (``python -m smartvlm_jax.sweep``)."""
    return (pathlib.Path(workdir) / "sweep.json").is_file()


def _read_table(path: pathlib.Path) -> tuple[list[str], list[dict[str, Any]]]:
    """``table.csv`` (long form) as (groups in order, [{"label", "members", "cells": {"S_acc/<group>":
    "mean ± std" in percent}}])."""
    rows: dict[str, dict[str, Any]] = {}
    groups: list[str] = []
    with open(path, newline="", encoding="utf-8") as f:
        for line in csv.DictReader(f):
            row = rows.setdefault(
                line["row"], {"label": line["row"], "members": int(line["members"]), "cells": {}}
            )
            std = float(line["std"]) if line["std"] else math.nan
            cell = reports.format_cell((float(line["mean"]), std))
            row["cells"][f"{line['metric']}/{line['group']}"] = cell
            if line["group"] not in groups:
                groups.append(line["group"])
    present = [g for g in ("all", *puzzles.SKILL_CLASSES) if g in groups]
    return present + [g for g in groups if g not in present], list(rows.values())


def _member_row(
    row: str, name: str, results: Mapping[str, Any], page: pathlib.Path, root: pathlib.Path
) -> dict[str, Any]:
    """A member's line in the sweep page's list: its test accuracies (fractions) and its page's href,
    relative to the sweep's root."""
    test = results.get("test") or {}
    return {
        "row": row,
        "member": name,
        "S_acc": test.get("S_acc"),
        "O_acc": test.get("O_acc"),
        "best_epoch": results.get("best_epoch"),
        "href": os.path.relpath(page, root),
    }


def _sweep_members(
    root: pathlib.Path, record: Mapping[str, Any], *, members: bool, max_cards: int, draw_plots: bool
) -> tuple[dict[str, dict[str, dict[str, float]]], list[dict[str, Any]], dict[int, smart101.PuzzleInfo]]:
    """(per row: {puzzle id as str: {"S", "O": the members' mean accuracy, a fraction}}, the members'
    lines (:func:`_member_row`), the puzzles' names and skills), over the members that finished; with
    ``members``, each one's page is written on the way (one thumbnail cache for all)."""
    thumbs = thumbnails.Cache()
    per_row: dict[str, dict[str, dict[str, float]]] = {}
    member_rows = []
    info: dict[int, smart101.PuzzleInfo] = {}
    for row in record.get("rows", {}):
        accs: dict[int, list[tuple[float, float]]] = {}
        for name in record.get("members", []):
            member = root / row / name
            if not (member / "results.json").is_file():
                continue
            results = reports.load_results(member)
            if not info:
                info = _puzzle_info((Workdir(member).run_config() or {}).get("data", {}).get("root", ""))
            for pid, m in (results.get("test") or {}).get("per_puzzle", {}).items():
                accs.setdefault(int(pid), []).append((m["S_acc"], m["O_acc"]))
            page = member / PAGE
            if members:
                links = {"sweep": os.path.relpath(root / PAGE, member)}
                page = write_run_page(
                    member, max_cards=max_cards, thumbs=thumbs, draw_plots=draw_plots, links=links
                )
            member_rows.append(_member_row(row, name, results, page, root))
        per_row[row] = {
            str(p): {"S": float(np.mean([a[0] for a in v])), "O": float(np.mean([a[1] for a in v]))}
            for p, v in sorted(accs.items())
        }
    return per_row, member_rows, info


def write_sweep_page(
    workdir: str | os.PathLike,
    *,
    members: bool = True,
    max_cards: int = MAX_CARDS,
) -> pathlib.Path:
    """Writes ``<sweep workdir>/report.html`` and, with ``members``, every member's own page (their
    thumbnails made once); returns the sweep page's path.

    The page shows the table (``table.csv``) beside ``table.png``, the per-puzzle S_acc/O_acc deltas
    between any two rows (each row's mean over its members; the rows are chosen on the page) and a link
    to each member's page. Raises FileNotFoundError when the sweep has no table yet (unfinished).
    """
    root = pathlib.Path(workdir).absolute()
    table_csv = root / "table.csv"
    if not (is_sweep(root) and table_csv.is_file()):
        raise FileNotFoundError(f"{root} is not a finished sweep workdir (it needs sweep.json and table.csv)")
    record = json.loads((root / "sweep.json").read_text())
    # The sweep's choice of cost: without member_plots, member pages show tables but draw no plot.
    config = json.loads((root / "config.json").read_text()) if (root / "config.json").is_file() else {}
    draw_plots = bool(config.get("member_plots", True))
    groups, table = _read_table(table_csv)
    per_row, member_rows, info = _sweep_members(
        root, record, members=members, max_cards=max_cards, draw_plots=draw_plots
    )
    rows = list(per_row)
    context = {
        "title": f"{root.name}: sweep report",
        "workdir": str(root),
        "generated": _now(),
        "groups": groups,
        "skill_set": [*puzzles.SKILL_CLASSES, "all"],
        "table": table,
        "table_png": _png_uri(root / "table.png"),
        "rows": rows,
        "per_row": per_row,
        "puzzle_info": {
            str(p): {"name": i.name, "skill": i.type}
            for p, i in info.items()
            if any(str(p) in v for v in per_row.values())
        },
        "members": member_rows,
        "total_s": record.get("total_s"),
        "default_pair": [rows[0], rows[1] if len(rows) > 1 else rows[0]] if rows else [],
    }
    return _write(root / PAGE, "sweep.html.j2", context)


def write_page(workdir: str | os.PathLike, **kwargs: Any) -> pathlib.Path:
    """The page of a sweep workdir (:func:`write_sweep_page`) or of a run workdir (:func:`write_run_page`),
    told apart by the sweep's ``sweep.json``; returns its path. FileNotFoundError when ``workdir`` is
    neither a finished run nor a finished sweep."""
    return (write_sweep_page if is_sweep(workdir) else write_run_page)(workdir, **kwargs)
