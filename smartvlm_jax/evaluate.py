"""``python -m smartvlm_jax.evaluate --workdir DIR [--split val|test] [--out DIR]``: re-evaluate a training
run's best model on a split, from its workdir alone; write the split's ``results.json`` and plots to
``DIR/evaluations/<split>/`` (or ``--out``), never over the training's own record, and rewrite the run's
page ``report.html`` (:mod:`smartvlm_jax.report`) when the workdir is writable and no ``--out`` was given.

Metric definitions live in :mod:`smartvlm_jax.metrics`, the table/plots/``results.json`` in
:mod:`smartvlm_jax.reports`, the evaluation itself in :func:`smartvlm_jax.train.evaluate_workdir`.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence

from smartvlm_jax import cli, console, workdir


def main(argv: Sequence[str] | None = None) -> int:
    """Re-evaluate the best model of a training workdir on a split; write the split's results.json and
    plots to WORKDIR/evaluations/SPLIT/ (or --out), leaving the training's own files as they are. A path the
    run recorded outside the workdir that has moved since is given as --config.FIELD=PATH (e.g.
    --config.towers.dinov2=/models/dinov2-base)."""
    parser = cli.ArgumentParser(prog=cli.prog("smartvlm_jax.evaluate"), description=main.__doc__)
    parser.add_argument("--workdir", required=True, help="training workdir (holds config.json, best_model)")
    parser.add_argument("--split", default="test", choices=("val", "test"), help="split to evaluate")
    parser.add_argument("--out", help="folder for results.json and plots (default WORKDIR/evaluations/SPLIT)")
    parser.add_argument(
        "--allow-other-towers",
        action="store_true",
        help="evaluate on towers whose contents differ from the run's (its sources.json): one warning",
    )
    parser.add_argument("--traceback", action="store_true", help=cli.TRACEBACK_HELP)
    args, rest = parser.parse_known_args(argv)
    paths = {}
    for arg in rest:  # --config.FIELD=PATH: a path the run config records, moved since
        field, sep, value = arg.removeprefix("--config.").partition("=")
        if not arg.startswith("--config.") or not sep:
            parser.error(f"unrecognized arguments: {arg}")
        paths[field] = value

    cli.keep_jax_off_absent_accelerators()
    console.configure_command()

    def evaluate() -> None:
        workdir.check_path(os.path.abspath(args.workdir), "--workdir")
        from smartvlm_jax import report, train  # heavy (JAX, orbax, grain): after the arguments are checked

        result = train.evaluate_workdir(args.workdir, args.split, args.out, paths, args.allow_other_towers)
        if "stopped" in result:
            print(result["message"], file=sys.stderr)
            return
        print(result["table"])
        print()
        print("written: " + ", ".join(shlex.quote(str(p)) for p in result["written"]))
        finished = workdir.Workdir(args.workdir).results.is_file()  # the page shows the training's record
        if args.out is None and finished and os.access(args.workdir, os.W_OK):  # --out: left alone
            try:
                print(f"report:  {shlex.quote(str(report.write_run_page(args.workdir)))}")
            except KeyboardInterrupt:  # the page is derived from the run: a stop here loses nothing
                print("Ctrl-C: report.html was not rewritten", file=sys.stderr)

    return cli.run(evaluate, args.traceback)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
