"""The paper's table in one command: every row of a sweep, each over several seeds trained at once.

  python -m smartvlm_jax.sweep --config configs/paper.py --workdir DIR [--config.seeds=3 ...]
  smartvlm-sweep --config configs/paper.py:smoke --workdir DIR      # the smoke version, minutes on a CPU

A row is a configuration (SMARTER, an ablation, optionally the SMART baseline: ``config.rows``,
``config.baseline``, each row's fields in ``config.row_overrides``); its members are ``config.seeds`` seeds
(times the ``config.grid`` head hyperparameters), trained together by ``train.train_members`` in one jitted
step with ``jax.vmap``. Every row reads the same data, the same built dataset, the same towers and the
shared feature store (``config.feature_store``), so the frozen towers run once per instance for the whole
sweep: the rows that use a subset of the fused towers' features (DINOv2 only, SigLIP only) read their
columns. ``config.parallel_rows`` rows train at once, each in its own thread (:func:`train_rows`). Layout of
``DIR``:

``config.json``          the sweep's resolved config
``inputs/``              synthetic puzzles, the TFDS build and tiny towers, when the config asks for them
``<row>/``               the row's group workdir (its stacked checkpoints)
``<row>/<member>/``      a member's own run workdir: ``results.json``, ``best_model/``, ``log.jsonl``, ...
``table.md``, ``table.csv``, ``table.png``  the table (``reports.format_sweep_table`` & co.)
``sweep.json``           rows, members, and where the time went (extraction against the whole sweep)
``run.log``              every log line

A rerun with the same ``DIR`` skips the finished rows and resumes the interrupted one from its checkpoint.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import logging
import math
import pathlib
import threading
import time
from collections.abc import Sequence
from typing import Any

import ml_collections

from smartvlm_jax import fileio, variants
from smartvlm_jax import main as main_lib  # its flags: --config, --workdir, --traceback
from smartvlm_jax.reasoner import config as head_config
from smartvlm_jax.workdir import Workdir

log = logging.getLogger("smartvlm_jax.sweep")  # (__name__ is "__main__" under python -m)

# The sweep's own fields of configs/paper.py; the rest is the run config every row starts from.
SWEEP_FIELDS = main_lib.SWEEP_FIELDS
# Head hyperparameters a grid may vary (same shapes, so members of one jitted step), and their run field.
GRID_FIELDS = {"lr": "optim.lr", "weight_decay": "optim.weight_decay", "pdrop": "model.pdrop"}
TABLE_FILES = ("table.md", "table.csv", "table.png")


def row_names(config: ml_collections.ConfigDict) -> list[str]:
    """The rows to run, in order: ``config.rows`` (comma-separated), then "baseline" if asked."""
    names = [r.strip() for r in str(config.rows).split(",") if r.strip()]
    if config.baseline and "baseline" not in names:
        names.append("baseline")
    known = ", ".join(config.row_overrides)
    if not names:
        raise ValueError(f"--config.rows={config.rows!r} names no row; choose from {known}")
    unknown = [r for r in names if r not in config.row_overrides]
    if unknown:
        raise ValueError(f"--config.rows={config.rows!r}: {', '.join(unknown)} is not one of {known}")
    repeated = sorted({r for r in names if names.count(r) > 1})
    if repeated:
        raise ValueError(f"--config.rows={config.rows!r} names {', '.join(repeated)} more than once")
    return names


def grid_settings(config: ml_collections.ConfigDict) -> list[dict[str, float]]:
    """Every combination of the grid's values ({} when the grid is empty); ValueError names the field."""
    axes = {}
    for name in GRID_FIELDS:
        text = str(config.grid.get(name, "") or "")
        try:
            values = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ValueError(
                f"--config.grid.{name}={text!r} is not a comma-separated list of numbers"
            ) from None
        if values:
            axes[name] = values
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def setting_label(setting: dict[str, float]) -> str:
    """ "lr 0.001, pdrop 0.1" (empty for no setting): how a row's grid setting reads in the table."""
    return ", ".join(f"{k} {v:g}" for k, v in setting.items())


def members_of(config: ml_collections.ConfigDict) -> list[tuple[dict[str, float], Any]]:
    """(grid setting, ``train.Member``) for every member of a row: each setting times ``config.seeds``
    seeds ``config.seed``, ``config.seed + 1``, ..."""
    from smartvlm_jax import train

    if int(config.seeds) < 1:
        raise ValueError(f"--config.seeds={config.seeds} must be >= 1")
    out = []
    for setting in grid_settings(config) or [{}]:
        prefix = "_".join(f"{k}{v:g}" for k, v in setting.items())
        for seed in range(config.seed, config.seed + int(config.seeds)):
            name = f"{prefix}_seed_{seed}" if prefix else f"seed_{seed}"
            out.append((setting, train.Member(name=name, seed=seed, **setting)))
    return out


def run_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The run config every row starts from: the sweep's config without its own fields."""
    base = ml_collections.ConfigDict(config.to_dict())
    for field in SWEEP_FIELDS:
        del base[field]
    return base


def row_config(
    config: ml_collections.ConfigDict, row: str, shared: dict[str, Any]
) -> ml_collections.ConfigDict:
    """A row's run config: the base, the row's fields, then the shared inputs' paths."""
    out = run_config(config)
    out.update(config.row_overrides[row].to_dict())
    out.update_from_flattened_dict(shared)
    return out


def shared_inputs(
    config: ml_collections.ConfigDict, rows: Sequence[str], sweep_dir, stop: Any = None
) -> dict[str, Any]:
    """Prepare once what every row reads, and return the overrides pointing the rows at it (flattened).

    Synthetic puzzles (``synthetic.enabled``) are written to ``inputs/synthetic`` and the TFDS dataset is
    built once (``inputs/tfds`` unless ``data.data_dir`` names one); tiny towers (``towers.tiny``) are built
    once per tower family in ``inputs/<family>/towers``, so the rows share towers (and feature-store
    entries) whatever their seeds. ``stop`` (a ``train.StopSignal``): ``train.Stopped`` between synthetic
    puzzles and before the build once a stop is requested.
    """
    from smartvlm_jax import train

    inputs = Workdir(sweep_dir / "inputs")
    inputs.root.mkdir(parents=True, exist_ok=True)
    configs = {row: row_config(config, row, {}) for row in rows}
    for row_cfg in configs.values():
        train.check_config(row_cfg)
        train.check_tiny_towers(row_cfg, inputs)  # a tower or data folder the inputs would replace
    data_cfg, data_rows, _, _ = train.prepare_data(configs[rows[0]], inputs, stop)
    shared = {"synthetic.enabled": False, "data.root": data_cfg.root, "data.data_dir": data_cfg.data_dir}
    if config.towers.tiny:
        shared["towers.tiny"] = False
        for row, row_cfg in configs.items():
            family = variants.get(row_cfg.model.variant).head  # "smarter" or "baseline" towers
            family_dir = Workdir(inputs.root / family)
            train.prepare_towers(row_cfg, family_dir, (r.question for r in data_rows))
            towers = train.tower_dirs(row_cfg, family_dir)
            for name in variants.get(row_cfg.model.variant).towers:
                shared[f"towers.{name}"] = towers[name]
            log.debug("row %s: tiny towers of %s", row, inputs.root / family)
    return shared


# Fields that only choose which rows and members to run or show: a rerun may change them.
SELECTION_FIELDS = ("rows", "baseline", "seeds", "member_plots", "parallel_rows")


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_same_sweep(config: ml_collections.ConfigDict, config_file) -> None:
    """ValueError naming the fields in which ``config`` differs from the sweep ``config_file`` describes
    (its rows' results would not be this config's); rows, seeds and plots may change between reruns."""
    path = pathlib.Path(config_file)
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    if not all(field in saved for field in SWEEP_FIELDS):
        raise ValueError(f"{path.parent} holds a training run, not a sweep (its {path}); use a new --workdir")
    if "model" in saved:  # written before a head field was renamed
        saved["model"] = head_config.upgrade(saved["model"])
    saved = _flatten(saved)
    now = _flatten(json.loads(config.to_json_best_effort()))
    changed = sorted(
        k for k in {*saved, *now} if saved.get(k) != now.get(k) and k.split(".")[0] not in SELECTION_FIELDS
    )
    if changed:
        fields = ", ".join(f"--config.{k}={now.get(k)!r} (it holds {saved.get(k)!r})" for k in changed[:5])
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        raise ValueError(
            f"{path.parent} holds a sweep of another config: {fields}{more}; use a new --workdir"
        )


def row_done(row_dir, members: Sequence[Any]) -> bool:
    """Whether every member of a row has its test results (a finished row is not trained again)."""
    from smartvlm_jax import reports

    for member in members:
        path = Workdir(row_dir / member.name).results
        if not path.is_file() or "test" not in reports.load_results(path.parent):
            return False
    return True


def extraction(row_dir, results: dict) -> dict[str, Any]:
    """What a row extracted: the store columns it wrote per split (the row's ``features.json``, written by
    the trainer) and the seconds its member's ``timing`` gives the splits that ran the towers (a split read
    from the store records no samples)."""

    record_file = Workdir(row_dir).feature_record
    splits = json.loads(record_file.read_text())["splits"] if record_file.is_file() else {}
    timing = results.get("timing", {})
    seconds = sum(v["seconds"] for k, v in timing.items() if k.startswith("features/") and v.get("samples"))
    return {"extraction_s": seconds, "extracted": {k: v.get("extracted", []) for k, v in splits.items()}}


def train_rows(
    config: ml_collections.ConfigDict,
    rows: Sequence[str],
    pending: Sequence[str],
    shared: dict[str, Any],
    root,
    members: Sequence[Any],
    seeds: str,
) -> dict[str, tuple[dict, float]]:
    """Train the ``pending`` of the sweep's ``rows``, ``config.parallel_rows`` at a time, each in its own
    thread: row -> (``train.train_members``' result, seconds). A row starts once the row before it has its
    features in the store, so the towers run for the first row that needs them and the others read them.

    One handler of SIGTERM and Ctrl-C (this thread's, ``train.StopSignal``) stops every running row at its
    next step, after a save (a second Ctrl-C aborts at once); rows not started then are not started (absent
    from the result). A row that fails stops the others the same
    way, and its exception is raised once they have saved.
    """
    import jax

    from smartvlm_jax import train

    workers = int(config.parallel_rows)
    if jax.process_count() > 1 and workers > 1:  # every process must issue a row's collectives in order
        log.info("parallel_rows=%d: %d processes train the rows one at a time", workers, jax.process_count())
        workers = 1
    stop_signal = train.StopSignal()
    stop = stop_signal.event

    def train_row(i: int, row: str, ready: threading.Event) -> tuple[dict, float] | None:
        try:
            if stop.is_set():
                return None
            counted = f"{len(members)} member{'s' * (len(members) > 1)}"
            log.info("row %d/%d %s: %s (%s) in one jitted step", i, len(rows), row, counted, seeds)
            start = time.perf_counter()
            out = train.train_members(
                row_config(config, row, shared),
                root / row,
                members,
                plots=config.member_plots,
                label=row if workers > 1 else "",
                stop=stop,
                features_ready=ready,
            )
            return out, time.perf_counter() - start
        finally:
            ready.set()  # (also when it failed or never started: the next row must not wait for ever)

    def stop_all_on_error(future: concurrent.futures.Future) -> None:
        if not future.cancelled() and future.exception() is not None:
            stop.set()

    results = {}
    with stop_signal:
        numbered = [(rows.index(row) + 1, row) for row in pending]
        if workers == 1:  # in this thread, one after another
            results = {row: train_row(i, row, threading.Event()) for i, row in numbered}
        else:
            futures = {}
            with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="row") as pool:
                for i, row in numbered:
                    ready = threading.Event()
                    futures[row] = pool.submit(train_row, i, row, ready)
                    futures[row].add_done_callback(stop_all_on_error)
                    ready.wait()  # the next row may read what this one extracts
            # a failed row's exception is raised here, once the others have saved and stopped
            results = {row: future.result() for row, future in futures.items()}
    return {row: result for row, result in results.items() if result is not None}


def run_sweep(config: ml_collections.ConfigDict, workdir) -> dict:
    """Train every row of the sweep (resuming), then write the table; returns ``sweep.json``'s content, or
    ``{"stopped_at_step": n, "row": name}`` when a SIGTERM or Ctrl-C stopped a row (rerun to resume; row
    None: it stopped while the shared data was written, before any row)."""
    from smartvlm_jax import train

    start = time.perf_counter()
    missing = [f for f in SWEEP_FIELDS if f not in config]
    if missing:
        raise ValueError(
            f"--config is a run config, not a sweep config (it has no {', '.join(missing)}): pass "
            "configs/paper.py, or train it with python -m smartvlm_jax.main"
        )
    root = pathlib.Path(workdir).absolute()
    root.mkdir(parents=True, exist_ok=True)
    rows = row_names(config)
    members = members_of(config)
    if int(config.parallel_rows) < 1:
        raise ValueError(f"--config.parallel_rows={config.parallel_rows} must be >= 1 (1: one row at a time)")
    for row in rows:  # every member against every row's config, before any work
        train.check_members(row_config(config, row, {}), [m for _, m in members])
    with train.lock(Workdir(root)):  # one sweep per workdir; a running one is named before its config
        check_same_sweep(config, root / "config.json")
        return sweep_rows(config, root, rows, members, start)


def sweep_rows(
    config: ml_collections.ConfigDict,
    root: pathlib.Path,
    rows: Sequence[str],
    members: Sequence[tuple[dict[str, float], Any]],
    start: float,
) -> dict:
    """:func:`run_sweep` once its checks passed, holding the sweep's workdir: the shared inputs, the rows
    not done before, the table."""
    from smartvlm_jax import train

    with train.StopSignal() as stop:
        try:
            shared = shared_inputs(config, rows, root, stop)
        except train.Stopped as e:
            log.info("%s: stopped; rerun the same command to resume", e)
            return {"stopped_at_step": 0, "row": None}
    # Written once the config has passed every check, so a rejected command leaves nothing to refuse later.
    fileio.write_text(root / "config.json", config.to_json_best_effort(indent=2) + "\n")
    previous = json.loads((root / "sweep.json").read_text()) if (root / "sweep.json").is_file() else {}
    member_list = [m for _, m in members]
    done = {row for row in rows if row_done(root / row, member_list)}
    for i, row in enumerate(rows, 1):
        if row in done:
            log.info("row %d/%d %s: done before, kept (%s)", i, len(rows), row, root / row)
    pending = [r for r in rows if r not in done]
    trained = train_rows(config, rows, pending, shared, root, member_list, seeds_label(config, len(members)))
    record, settings, stopped_rows = collect_rows(rows, members, root, trained, done, previous)
    if stopped_rows:
        record["total_s"] = previous.get("total_s", 0.0) + time.perf_counter() - start
        fileio.write_json(root / "sweep.json", record, indent=2, allow_nan=False)
        which = ", ".join(f"{row} (step {at})" if at else f"{row} (not started)" for at, row in stopped_rows)
        plural = "s" * (len(stopped_rows) > 1)
        log.info("row%s %s stopped by SIGTERM; rerun the same command to resume", plural, which)
        return {"stopped_at_step": stopped_rows[0][0], "row": stopped_rows[0][1]}
    table, title = write_table(config, root, settings)
    record["total_s"] = previous.get("total_s", 0.0) + time.perf_counter() - start  # over every invocation
    record["extraction_s"] = sum(r["extraction_s"] for r in record["rows"].values())
    fileio.write_json(root / "sweep.json", record, indent=2, allow_nan=False)
    from smartvlm_jax import report  # the sweep's page and every member's (their test answers, no towers)

    page = report.write_sweep_page(root)
    print_summary(table, title, root, record, len(rows), len(members), page)
    return record


def seeds_label(config: ml_collections.ConfigDict, num_members: int) -> str:
    """ "seeds 0-2" or "seed 0", and the number of grid settings when there is a grid: a row's log line."""
    last = config.seed + int(config.seeds) - 1
    seeds = f"seeds {config.seed}-{last}" if last > config.seed else f"seed {config.seed}"
    if num_members > int(config.seeds):
        seeds += f", {num_members // int(config.seeds)} grid settings"
    return seeds


def collect_rows(
    rows: Sequence[str],
    members: Sequence[tuple[dict[str, float], Any]],
    root: pathlib.Path,
    trained: dict[str, tuple[dict, float]],
    done: set[str],
    previous: dict,
) -> tuple[dict[str, Any], dict[str, list[dict]], list[tuple[int, str]]]:
    """After :func:`train_rows`: (``sweep.json``'s record of rows and members, each table label's member
    results, the rows a SIGTERM stopped or kept from starting as (step, row), 0 for not started).

    A row's record holds its seconds over every invocation (``previous`` is the last ``sweep.json``) and,
    once finished, what it extracted (:func:`extraction`). Each finished row's test accuracy is logged.
    """
    from smartvlm_jax import reports

    record: dict[str, Any] = {"rows": {}, "members": [m.name for _, m in members]}
    settings: dict[str, list[dict]] = {}
    stopped_rows: list[tuple[int, str]] = []
    for row in rows:
        times, stopped_at = _row_time(row, trained, done, previous)
        if stopped_at is not None:
            if times:
                record["rows"][row] = times
            stopped_rows.append((stopped_at, row))
            continue
        results = {m.name: reports.load_results(root / row / m.name) for _, m in members}
        record["rows"][row] = {**times, **extraction(root / row, results[members[0][1].name])}
        labels = []
        for setting, member in members:
            label = f"{row} ({setting_label(setting)})" if setting else row
            settings.setdefault(label, []).append(results[member.name])
            labels.append(label)
        _log_row_accuracy({label: settings[label] for label in dict.fromkeys(labels)})
    return record, settings, stopped_rows


def _row_time(
    row: str, trained: dict[str, tuple[dict, float]], done: set[str], previous: dict
) -> tuple[dict[str, float], int | None]:
    """({"seconds": s} over every invocation, or {} when none is known; the step a SIGTERM stopped the row
    at, 0 when it kept the row from starting, None when the row is finished)."""
    # seconds an earlier invocation spent on this row: kept for a finished row, added to for a resumed one
    before = previous.get("rows", {}).get(row, {}).get("seconds")
    if row in trained:
        out, seconds = trained[row]
        stopped = [r["stopped_at_step"] for r in out.values() if "stopped_at_step" in r]
        return {"seconds": (before or 0.0) + seconds}, (stopped[0] if stopped else None)
    return ({} if before is None else {"seconds": before}), (None if row in done else 0)


def _log_row_accuracy(settings: dict[str, list[dict]]) -> None:
    """One log line per table label of a row: test S_acc and O_acc, mean ± std over its members."""
    from smartvlm_jax import reports

    for line in reports.sweep_rows(settings):
        if line.members:  # (the greedy and chance rows are the table's)
            s, o = (reports.format_cell(line.cells[(metric, "all")]) for metric in ("S_acc", "O_acc"))
            plural = "s" * (line.members > 1)
            log.info(
                "row %s: test S_acc %s %%, O_acc %s %% over %d seed%s", line.label, s, o, line.members, plural
            )


def write_table(
    config: ml_collections.ConfigDict, root: pathlib.Path, settings: dict[str, list[dict]]
) -> tuple[list, str]:
    """``table.md``, ``table.csv`` and ``table.png`` of the finished sweep; returns (the table's rows, its
    title)."""
    from smartvlm_jax import reports

    table = reports.sweep_rows(settings)
    n_seeds = int(config.seeds)
    title = (
        f"Test accuracy (%), mean ± std over {n_seeds} seeds"
        if n_seeds > 1
        else "Test accuracy (%), one seed"
    )
    fileio.write_text(root / "table.md", reports.format_sweep_table(table, title))
    reports.write_sweep_csv(table, root / "table.csv")
    reports.plot_sweep_table(table, root / "table.png", title)
    return table, title


def print_summary(
    table: list, title: str, root: pathlib.Path, record: dict, num_rows: int, num_members: int, page
) -> None:
    """The table, the sweep's time and extraction's share of it, and where the files are (stdout);
    ``page``: the sweep's report page."""
    from smartvlm_jax import reports

    print(reports.format_sweep_table(table, title))
    share = record["extraction_s"] / record["total_s"] if record["total_s"] else math.nan
    extracted = f"feature extraction {record['extraction_s']:.1f} s, {100 * share:.0f} %"
    print(f"{num_rows} rows x {num_members} members in {record['total_s']:.1f} s ({extracted})")
    for name in TABLE_FILES:
        print(f"  {name + ':':11}{root / name}")
    print(f"  {'report:':11}{page} (and each member's report.html)")
    print(f"  {'members:':11}{root}/<row>/<member>/results.json")


def compile_only(
    config: ml_collections.ConfigDict, workdir: str | pathlib.Path, target: str, *, search_budget: int = 6
) -> dict[str, dict]:
    """``--compile_only``: ``aot.compile_run`` for each row of the sweep: the row's config, its members'
    vmapped step (one member per seed and grid point); reports in ``<workdir>/<row>/``. Raises
    ``aot.DoesNotFit`` naming every row with a program that does not fit, after all rows are reported."""
    from smartvlm_jax import aot

    members = len(members_of(config))
    results, refused = {}, []
    for row in row_names(config):
        print(f"\n== row {row}: {members} members")
        try:
            results[row] = aot.compile_run(
                row_config(config, row, {}),
                pathlib.Path(workdir) / row,
                target,
                members=members,
                search_budget=search_budget,
            )
        except aot.DoesNotFit as e:
            refused.append(f"row {row}: {e}")
    if refused:
        raise aot.DoesNotFit("\n".join(refused))
    return results


def main(argv: list[str]) -> None:
    main_lib.run_job("smartvlm_jax.sweep:run_sweep", argv)


def run(argv: Sequence[str] | None = None) -> None:
    """``smartvlm-sweep`` (and ``python -m smartvlm_jax.sweep``): the flags of ``smartvlm-train``."""
    advice = "it is a run config, not a sweep config: pass configs/paper.py, or train it with smartvlm-train"
    main_lib.run(argv, job=main, other=None, needs=(SWEEP_FIELDS, advice))


if __name__ == "__main__":
    run()
