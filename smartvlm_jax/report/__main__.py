"""``python -m smartvlm_jax.report --workdir DIR``: (re)write ``DIR/report.html``, the page of a training
run or of a sweep (told apart by the sweep's ``sweep.json``; a sweep's members get their pages too)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from smartvlm_jax import cli, workdir


def main(argv: Sequence[str] | None = None) -> int:
    """Write the report page of a run or sweep workdir and print its path."""
    from smartvlm_jax.report import pages

    parser = cli.ArgumentParser(prog="python -m smartvlm_jax.report", description=main.__doc__)
    parser.add_argument("--workdir", required=True, help="a training run's or a sweep's workdir")
    parser.add_argument(
        "--max-cards",
        type=int,
        default=pages.MAX_CARDS,
        help="gallery cards at most; a larger test split shows a per-puzzle sample",
    )
    parser.add_argument("--traceback", action="store_true", help=cli.TRACEBACK_HELP)
    args = parser.parse_args(argv)
    if args.max_cards < 1:
        parser.error(f"--max-cards={args.max_cards} must be >= 1")
    cli.keep_jax_off_absent_accelerators()

    def write() -> None:
        workdir.check_writable(args.workdir, "--workdir")
        print(pages.write_page(args.workdir, max_cards=args.max_cards))

    return cli.run(write, args.traceback)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
