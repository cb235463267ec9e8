"""Evaluation: a split answered by every member in one pass, the best models tested at the end of a run
(results.json, the table, the plots), and the re-evaluation of a finished workdir.
"""

import logging
import math
import pathlib
from collections.abc import Mapping, Sequence

import jax
import ml_collections
import numpy as np

from smartvlm_jax import console, features, metrics, parallel, reasoner, report, reports, sources
from smartvlm_jax.train import setup as setup_lib
from smartvlm_jax.train.group import Group
from smartvlm_jax.train.inputs import Inputs, prepare_inputs
from smartvlm_jax.train.setup import Run
from smartvlm_jax.train.signals import Stopped, StopSignal
from smartvlm_jax.workdir import Workdir, check_writable

log = logging.getLogger(__name__)

# What evaluation keeps of each batch besides the predictions.
EVAL_FIELDS = ("labels", "puzzle_ids", "option_values", "answer_index", "mask")


def best_params(run: Run):
    """The parameters of ``<workdir>/best_model``, replicated over the run's mesh."""
    _, best_vars, _ = reasoner.load(run.workdir.root)
    return jax.device_put(best_vars["params"], parallel.replicated(run.mesh))


class Evaluator:
    """Answers a split with a group's parameters (a group's stacked ones in one pass over the batches:
    ``predict`` gives [N, B, K]) and scores each member's answers (``metrics.evaluate_split``)."""

    def __init__(self, group: Group, inputs: Inputs, predict):
        self.group, self.inputs, self.predict = group, inputs, predict

    def evaluate(
        self, params, split: str, baselines: bool = True, stop: StopSignal | None = None
    ) -> list[dict]:
        """One result per member (one for a single run): SPEC 8 metrics over every example of ``split``
        once, with (``baselines``) the greedy and chance baselines from the training split. A transient
        progress bar shows while it runs. ``stop``: raise :class:`Stopped` between batches once a stop is
        requested (outside the train loop, whose validation finishes before it saves and stops)."""
        run, stacked = self.group.run, self.group.stacked
        eval_batch = run.config.eval_batch_size
        outs = {k: [] for k in ("preds", *EVAL_FIELDS)}
        batches = self.inputs.batches(split, shuffle=False, num_epochs=1, global_batch=eval_batch)
        num_batches = math.ceil(len(run.splits[split]) / eval_batch)
        progress = console.Progress(split, num_batches, "batches", leave=False, enabled=run.is_lead)
        if stop is not None:
            batches = stop.guard(batches, f"the {split} evaluation")
        for batch in progress.iterate(batches):
            gbatch = run.to_global(batch)
            preds = features.host_value(self.predict(params, gbatch, self.inputs.tower_params))
            outs["preds"].append(preds if stacked else preds[None])
            for k in EVAL_FIELDS:
                outs[k].append(features.host_value(gbatch[k]))
        a = {k: np.concatenate(v, axis=1 if k == "preds" else 0) for k, v in outs.items()}
        return [
            metrics.evaluate_split(
                preds,
                a,
                run.num_classes,
                train_labels=run.train_labels if baselines else None,
                mask=a["mask"].astype(bool),
                skills=run.skills,
            )
            for preds in a["preds"]
        ]

    def test_best_models(
        self, records: Sequence[dict], steps: Sequence[int], plots: bool, stop: StopSignal | None = None
    ) -> list[dict]:
        """Evaluate each member's ``<workdir>/best_model`` on the test split (one pass); write each
        results.json (and with ``plots`` the test plots, and a single run's ``report.html``). A single run
        prints the table and the summary of where everything went (``reports.format_summary``); a group one
        line per member."""
        group, run = self.group, self.group.run
        with run.timing("eval"):
            params = group.stack([best_params(r) for r in group.runs])
            tests = self.evaluate(params, "test", stop=stop)
        out = []
        for r, test, record, member_steps in zip(group.runs, tests, records, steps, strict=True):
            results = run_results(r, test, record, member_steps)
            if r.is_lead and plots:
                with r.timing("plots"):
                    reports.plot_results(test, r.workdir, prefix="test")
            results["timing"] = r.timing.record()
            if r.compiles is not None:
                cache_dir = str(r.compile_cache) if r.compile_cache else None
                results["xla"] = {**r.compiles.record(), "cache_dir": cache_dir}
            if r.is_lead:
                reports.write_results(r.workdir, results)
                if not group.stacked:  # (a sweep writes its members' pages with its own)
                    if plots:
                        with r.timing("plots"):
                            report.write_run_page(r.workdir)
                    print(reports.format_table(test, r.skills, r.names))
                    print()
                    print(reports.format_summary(results, r.workdir))
            out.append(results)
        if group.stacked and run.is_lead:
            group.print_test_lines(out)
        return out


def run_results(run: Run, test: dict, record: dict, steps: int) -> dict:
    """A run's results.json before timing: the best epoch's val result, the test result, the best epoch,
    the epochs and steps trained."""
    best_epoch = int(record["best_epoch"])
    return {
        "val": record["val"][best_epoch - 1] if best_epoch > 0 else None,
        "test": test,
        "best_epoch": best_epoch,
        "epochs": int(record["epoch"]),
        "steps": steps,
    }


def evaluate_workdir(
    workdir: str | pathlib.Path,
    split: str = "test",
    out: str | pathlib.Path | None = None,
    paths: Mapping[str, str] | None = None,
    allow_other_towers: bool = False,
) -> dict:
    """Re-evaluate a finished (or interrupted) run's best model on a split, from its workdir alone.

    Reads ``<workdir>/config.json`` (the resolved run config) and the run's features from the store, and
    writes the split's metrics (with the greedy and chance baselines) and plots to ``out`` (default
    ``<workdir>/evaluations/<split>/``): the training's own record (config.json, results.json,
    features.json, its plots) is never changed, so a read-only workdir can be evaluated with ``out``
    elsewhere. Returns the metrics, the console table under "table" and the files written under
    "written". SIGTERM or Ctrl-C stops it between batches, writing nothing: then it returns
    ``{"stopped": stage, "message": one line, "table": "", "written": []}``.

    ``paths``: new places of paths the run config records outside the workdir (``workdir.PATH_FIELDS``:
    "towers.dinov2" -> a directory), for a run whose data or towers moved. Each is compared with the
    digest the run recorded (``sources.json``, :mod:`smartvlm_jax.sources`): changed data is one
    warning; a changed tower is refused (``sources.SourceChangedError``, naming both directories) unless
    ``allow_other_towers``.

    FileNotFoundError or ValueError when the directory is not a training workdir, or naming the recorded
    path that is missing and the flag that gives its new place; PermissionError naming the folder when
    ``out`` cannot be written.
    """
    workdir = Workdir(workdir)
    if not workdir.config_file.is_file():
        raise FileNotFoundError(
            f"{workdir.config_file} does not exist: is {workdir.root} a training workdir?"
        )
    saved = workdir.read_config()
    if not ("towers" in saved and "optim" in saved):
        raise ValueError(
            f"{workdir.root} is a model dir, not a training workdir (its config.json is a head's): pass the "
            "training run's directory, or answer with predict --checkpoint"
        )
    holder = workdir.holder()
    if not workdir.best_model.is_dir():  # (else the run's own config.json would be read as a model's)
        raise FileNotFoundError(
            f"{workdir.best_model} does not exist yet: {workdir.root} is in use by {holder}, which writes it "
            "with its first checkpoint after a validation; evaluate once it has"
            if holder
            else f"{workdir.best_model} does not exist: the run stopped before its first validation; resume "
            "it with its python -m smartvlm_jax.main command"
        )
    if holder:  # its best_model is replaced whenever a later validation does better
        log.warning("%s is still training (%s): its best model so far is evaluated", workdir.root, holder)
    saved = workdir.with_moved_paths(saved, paths or {})
    out = pathlib.Path(out) if out is not None else workdir.evaluations / split
    check_writable(out, "evaluate's output folder", hint=": choose another folder with --out")
    with StopSignal() as stop:
        try:
            run = setup_lib.setup(ml_collections.ConfigDict(saved), workdir, stop=stop, record=False)
            sources.check_run(
                workdir.root,
                run.sources,
                consequence="the metrics are of the rows as they are now",
                refuse_how=None
                if allow_other_towers
                else "give its new place with --config.FIELD=PATH, "
                "or evaluate anyway with --allow-other-towers",
            )
            group = Group.create(run, None)
            inputs = prepare_inputs(run, stop, record=False)
            evaluator = Evaluator(group, inputs, group.predict_fn(inputs.towers))
            result = evaluator.evaluate(best_params(run), split, stop=stop)[0]
        except Stopped as e:
            message = f"{e}: stopped, nothing written"
            return {"stopped": e.stage, "message": message, "table": "", "written": []}
    table, written = "", []
    if run.is_lead:
        out.mkdir(parents=True, exist_ok=True)
        table = reports.report(out, split, result, skills=run.skills, names=run.names)
        written = [out / "results.json", *(Workdir(out).plot(split, g) for g in ("puzzle", "skill"))]
    return {**result, "table": table, "written": written}
