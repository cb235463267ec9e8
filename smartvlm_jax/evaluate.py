"""``python -m smartvlm_jax.evaluate --workdir DIR [--split val|test]``: re-evaluate a training run's best
model on a split, from its workdir alone; update ``results.json``, the split's plots and the run's page
``report.html`` (:mod:`smartvlm_jax.report`).

Metric definitions live in :mod:`smartvlm_jax.metrics`, the table/plots/``results.json`` in
:mod:`smartvlm_jax.reports`, the evaluation itself in :func:`smartvlm_jax.train.evaluate_workdir`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from smartvlm_jax import cli


def main(argv: Sequence[str] | None = None) -> int:
    """Re-evaluate the best checkpoint of a training workdir on a split; update results.json, plots and
    report.html."""
    parser = argparse.ArgumentParser(prog="python -m smartvlm_jax.evaluate", description=main.__doc__)
    parser.add_argument("--workdir", required=True, help="training workdir (holds config.json, best_model)")
    parser.add_argument("--split", default="test", choices=("val", "test"), help="split to evaluate")
    parser.add_argument("--traceback", action="store_true", help=cli.TRACEBACK_HELP)
    args = parser.parse_args(argv)
    from smartvlm_jax import report, train  # heavy (JAX, orbax, grain): after the arguments are checked

    def evaluate() -> None:
        print(train.evaluate_workdir(args.workdir, args.split)["table"])
        print(f"report: {report.write_run_page(args.workdir)}")

    return cli.run(evaluate, args.traceback)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
