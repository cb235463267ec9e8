"""Answer SMART-101 puzzles from a checkpoint: one puzzle, a whole split, or a latency benchmark.

One puzzle (prints the value, the chosen option letter and the top probabilities; --json for a record):

  python -m smartvlm_jax.predict --checkpoint DIR --image PATH --question TEXT \
      --options "o1|o2|o3|o4|o5" --puzzle-id N [--towers DIR ...] [--json]

A split of a SMART-101 folder (one CSV row per instance; prints S_acc and O_acc):

  python -m smartvlm_jax.predict --checkpoint DIR --data-root SMART101_DIR --puzzles all|ID,ID \
      --split test --out preds.csv [--towers DIR ...]

Latency and throughput on this machine:

  python -m smartvlm_jax.predict --checkpoint DIR --benchmark 64 [--towers DIR ...]

DIR is a training workdir (self-describing: its config.json names the towers, the data folder and the
split settings, so --checkpoint alone is enough) or a reasoner model dir, e.g. one converted from a reference
checkpoint by `python -m smartvlm_jax.convert reference`, which needs --towers (HF or converted directories
of the kinds its `features` variant uses). Bad input exits with status 1 and a message naming it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from smartvlm_jax import cli, console, fileio, metrics, reports, sources, variants
from smartvlm_jax.data import smart101
from smartvlm_jax.inference import Predictions, Predictor
from smartvlm_jax.workdir import Workdir

CSV_FIELDS = (
    "puzzle_id",
    "instance_id",
    "image",
    "prediction",
    "option",
    "probability",
    "top",
    "answer_option",
    "answer",
    "s_correct",
    "o_correct",
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = cli.ArgumentParser(prog=cli.prog("smartvlm_jax.predict"), description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="training workdir or reasoner model dir")
    p.add_argument(
        "--towers", nargs="+", default=None, help="tower dirs (HF or converted); default: the run's"
    )
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="tower dtype")
    p.add_argument("--batch-size", type=cli.positive_int, default=64, help="examples per device batch")
    p.add_argument(
        "--top-k", type=cli.positive_int, default=3, help="most probable values reported per position"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument(
        "--allow-other-towers",
        action="store_true",
        help="answer with towers whose contents differ from those the head was trained with (a warning)",
    )
    p.add_argument("--traceback", action="store_true", help=cli.TRACEBACK_HELP)
    one = p.add_argument_group("one puzzle")
    one.add_argument("--image", help="puzzle image (PNG of any size and mode)")
    one.add_argument("--question", help="question text")
    one.add_argument("--options", help='the five options separated by "|" (optional)')
    one.add_argument("--puzzle-id", type=int, help="puzzle id 1..101")
    many = p.add_argument_group("a split of a SMART-101 folder")
    many.add_argument("--data-root", help="SMART-101 folder; default: the training run's")
    many.add_argument("--puzzles", default=None, help="all | comma-separated ids; default: the checkpoint's")
    many.add_argument("--split", default=None, choices=("train", "val", "test", "all"), help="rows to answer")
    many.add_argument("--out", help="CSV of one row per instance")
    bench = p.add_argument_group("benchmark")
    bench.add_argument("--benchmark", type=int, default=0, metavar="N", help="time batch 1 and batch N")
    bench.add_argument("--repeats", type=cli.positive_int, default=10, help="timed calls per measurement")
    args, rest = p.parse_known_args(argv)
    args.paths = {}
    for arg in rest:  # --config.FIELD=PATH: a path the run config records, moved since (as evaluate takes)
        field, sep, value = arg.removeprefix("--config.").partition("=")
        if not arg.startswith("--config.") or not sep:
            p.error(f"unrecognized arguments: {arg}")
        args.paths[field] = value
    return args


# ---------------------------------------------------------------------------------------- one puzzle


def split_options(text: str | None) -> list[str] | None:
    """'o1|o2|o3|o4|o5' -> five option texts; None stays None."""
    if text is None:
        return None
    options = [o.strip() for o in text.split("|")]
    if len(options) != len(smart101.OPTION_LETTERS):
        raise ValueError(f"--options needs 5 options separated by '|', got {len(options)}: {text!r}")
    return options


def format_record(record: dict[str, Any], options: Sequence[str] | None = None) -> str:
    """Human-readable answer: the chosen option's letter and text (the value the head predicted beside it:
    an icon index or a number, as SPEC section 2 encodes answers), and per position the top values with
    their probabilities."""
    letter = record["option"]
    if letter is not None and options is not None:
        text = options[smart101.OPTION_LETTERS.index(letter)]
        head = f"option {letter}: {text!r} (predicted value {record['answer']})"
    elif options is not None:
        head = f"no option matches the predicted value {record['answer']}"
    else:
        head = f"predicted value {record['answer']} (no --options given)"
    lines = [f"puzzle {record['puzzle_id']}: {head}"]
    for pos, top in enumerate(record["top"]):
        where = f"position {pos}" if len(record["top"]) > 1 else "top"
        lines.append(f"  {where}: " + ", ".join(f"{t['value']} ({t['prob']:.3f})" for t in top))
    return "\n".join(lines)


def run_one(predictor: Predictor, args: argparse.Namespace) -> None:
    if args.question is None or args.puzzle_id is None:
        raise ValueError("--image needs --question and --puzzle-id")
    options = split_options(args.options)
    out = predictor.predict(
        [args.image], [args.question], None if options is None else [options], args.puzzle_id
    )
    record = out.record(0)
    if options is not None:
        record["option_text"] = (
            options[smart101.OPTION_LETTERS.index(record["option"])] if record["option"] else None
        )
    if args.json:
        print(json.dumps(reports.to_json_safe(record), allow_nan=False))
    else:
        print(format_record(record, options))


# ---------------------------------------------------------------------------------------- a split


def split_rows(
    predictor: Predictor, data_root: str, puzzles: str | None, split: str
) -> tuple[list[smart101.Row], list[smart101.Row], dict[int, int]]:
    """(rows to answer, the training split's rows, C_p of their puzzles), split with the training run's
    data settings if any (the training rows give the greedy baseline)."""
    run = Workdir(predictor.source).run_config() or {}
    data_cfg = smart101.default_data_config()
    data_cfg.update({k: v for k, v in run.get("data", {}).items() if k in data_cfg})
    if puzzles is None:
        found = set(smart101.found_puzzle_ids(data_root))
        ids = [p for p in predictor.puzzle_ids if p in found]
        if not ids:
            raise ValueError(f"{data_root} holds none of the checkpoint's puzzles {predictor.puzzle_ids}")
    else:
        ids = smart101.resolve_puzzle_ids(data_root, puzzles)
    rows = smart101.read_rows(data_root, ids)
    num_classes = smart101.num_classes(rows)
    train_rows = smart101.split_rows(rows, "train", data_cfg, num_classes)
    if split != "all":
        rows = smart101.split_rows(rows, split, data_cfg, num_classes)
    if not rows:
        raise ValueError(f"the {split} split of puzzles {ids} in {data_root} is empty")
    return rows, train_rows, num_classes


def _cell(values: Sequence[int]) -> str:
    return " ".join(str(int(v)) for v in values)


def moved_run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The run config of ``--checkpoint`` (a training workdir; {} for a model dir) with the
    ``--config.FIELD=PATH`` of paths moved since applied; FileNotFoundError naming a recorded path this
    command reads (the data root for a split, the towers unless --towers) that is missing, and its flag."""
    workdir = Workdir(args.checkpoint)
    run = workdir.run_config()
    if run is None:
        if args.paths:
            raise ValueError(f"--config.{next(iter(args.paths))}: {args.checkpoint} is no training workdir")
        return {}
    check = [f"towers.{name}" for name in run.get("towers", {})] if args.towers is None else []
    if not args.data_root and (args.split or args.out):
        check.append("data.root")
    return workdir.with_moved_paths(run, args.paths, check)


def check_data(run: dict[str, Any], data_root: str, workdir: str) -> None:
    """One warning when the run's data root, read again, differs from the digest the run recorded
    (``sources.json``): the metrics are then of the rows as they are now."""
    digest = sources.data_digest(data_root, run["data"]["puzzle_ids"])
    current = {sources.DATA_ROOT: sources.entry(data_root, digest)}
    consequence = "the metrics are of the rows as they are now"
    sources.check_run(workdir, current, consequence=consequence, refuse_how=None)


def run_split(predictor: Predictor, args: argparse.Namespace, run: dict[str, Any]) -> dict[str, Any]:
    data_root = args.data_root or run.get("data", {}).get("root")
    if args.data_root and not os.path.isdir(args.data_root):
        raise FileNotFoundError(f"--data-root {args.data_root!r} is not a directory")
    if not data_root:
        raise ValueError(f"{args.checkpoint} is a model dir: name the SMART-101 folder with --data-root")
    if run and not args.data_root:
        check_data(run, data_root, args.checkpoint)
    rows, train_rows, num_classes = split_rows(predictor, data_root, args.puzzles, args.split or "test")
    start = time.perf_counter()
    out = predictor.predict(
        [r.image_path for r in rows],
        [r.question for r in rows],
        [r.options for r in rows],
        [r.puzzle_id for r in rows],
    )
    seconds = time.perf_counter() - start
    labels = smart101.label_arrays(rows)
    train_labels = smart101.label_arrays(train_rows) if train_rows else None
    skills = {pid: info.type for pid, info in smart101.read_puzzle_info(data_root).items()}
    result = metrics.evaluate_split(out.values, labels, num_classes, train_labels, skills=skills)
    s_ok, o_ok = metrics.correctness(
        out.values, labels["labels"], labels["puzzle_ids"], labels["option_values"], labels["answer_index"]
    )
    if args.out:
        write_csv(args.out, rows, out, s_ok, o_ok)
    summary = {
        "split": args.split or "test",
        "n": result["n"],
        "S_acc": result["S_acc"],
        "O_acc": result["O_acc"],
        "err": result["err"],
        "seconds": seconds,
        "out": args.out,
    }
    if args.json:
        print(json.dumps(reports.to_json_safe(summary), allow_nan=False))
    else:
        print(
            f"{summary['split']}: {result['n']} instances, S_acc {100 * result['S_acc']:.2f}%, "
            f"O_acc {100 * result['O_acc']:.2f}%, {result['n'] / seconds:.1f} examples/s"
            + (f"; wrote {args.out}" if args.out else "")
        )
    return {**summary, "metrics": result}


def write_csv(
    path: str, rows: Sequence[smart101.Row], out: Predictions, s_ok: np.ndarray, o_ok: np.ndarray
) -> None:
    """One row per instance: prediction (space-separated for sequences), option, probability, labels."""
    with fileio.atomic_open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, CSV_FIELDS)
        writer.writeheader()
        for i, row in enumerate(rows):
            n = int(out.num_positions[i])
            writer.writerow(
                {
                    "puzzle_id": row.puzzle_id,
                    "instance_id": row.instance_id,
                    "image": os.path.basename(row.image_path),
                    "prediction": _cell(out.values[i, :n]),
                    "option": out.letters[i] or "",
                    "probability": f"{float(np.prod(out.top_probs[i, :n, 0])):.6f}",
                    "top": ";".join(
                        f"{v}:{p:.4f}" for v, p in zip(out.top_values[i, 0], out.top_probs[i, 0], strict=True)
                    ),
                    "answer_option": row.answer_letter,
                    "answer": _cell(row.label[:n]),
                    "s_correct": int(s_ok[i]),
                    "o_correct": int(o_ok[i]),
                }
            )


# ---------------------------------------------------------------------------------------- benchmark


def synthetic_inputs(predictor: Predictor, n: int, seed: int = 0) -> tuple[list[bytes], list[str], list[int]]:
    """n RGBA PNGs of the release's sizes (256..512 px), one question, the checkpoint's first puzzle."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        w, h = (int(s) for s in rng.integers(256, 513, size=2))
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA").save(buf, "PNG")
        images.append(buf.getvalue())
    question = "How many circles are there in the picture, counting the ones that overlap the square?"
    return images, [question] * n, [predictor.puzzle_ids[0]] * n


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def run_benchmark(predictor: Predictor, args: argparse.Namespace) -> dict[str, Any]:
    """Latency of one example and throughput of a batch of N, end to end (PNG decode to answer)."""
    n = args.benchmark
    images, questions, pids = synthetic_inputs(predictor, n)
    results: dict[str, Any] = {"batch": n, "repeats": args.repeats, "load_s": args.load_s}
    for size in (1, n):
        x = (images[:size], questions[:size], None, pids[:size])
        start = time.perf_counter()
        predictor.predict(*x)  # compiles this batch shape
        results[f"first_call_s_batch{size}"] = time.perf_counter() - start
        total = timed(lambda x=x: predictor.predict(*x), args.repeats)
        host = timed(lambda x=x: predictor.prepare(x[0], x[1]), args.repeats)
        results[f"batch{size}"] = {
            "median_ms": 1e3 * statistics.median(total),
            "min_ms": 1e3 * min(total),
            "host_preprocess_median_ms": 1e3 * statistics.median(host),
            "examples_per_s": size / statistics.median(total),
        }
    if args.json:
        print(json.dumps(results))
    else:
        print(
            f"checkpoint {predictor.source}; towers: "
            + ", ".join(f"{k} {t.hidden_size}-d" for k, t in predictor.towers.vision.items())
            + f", text {predictor.towers.text_dim}-d; load {args.load_s:.1f} s"
        )
        for size in (1, n):
            r = results[f"batch{size}"]
            print(
                f"batch {size:>3}: median {r['median_ms']:.1f} ms (min {r['min_ms']:.1f}), host preprocess "
                f"{r['host_preprocess_median_ms']:.1f} ms, {r['examples_per_s']:.1f} examples/s; "
                f"first call {results[f'first_call_s_batch{size}']:.1f} s"
            )
    return results


# ---------------------------------------------------------------------------------------- entry


def check_out(path: str | None) -> None:
    """Refuse ``--out`` before any work when its folder is missing or it names a folder."""
    if not path:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--out {path}: the folder {folder} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"--out {path} is a folder; give a CSV file name")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (1 with a message on bad input)."""
    args = parse_args(argv)
    cli.keep_jax_off_absent_accelerators()
    console.configure_command()

    def run() -> None:
        check_out(args.out)
        start = time.perf_counter()
        run = moved_run_config(args)
        towers = args.towers
        if towers is None and any(f.startswith("towers.") for f in args.paths):  # moved: the new places
            towers = {name: run["towers"][name] for name in variants.get(run["model"]["variant"]).towers}
        try:
            predictor = Predictor.load(
                args.checkpoint,
                towers=towers,
                dtype=args.dtype,
                batch_size=args.batch_size,
                top_k=args.top_k,
                allow_other_towers=args.allow_other_towers,
            )
        except sources.SourceChangedError as e:  # the API's argument named as this command's flag
            raise e.allowed_by("pass the towers it was trained with, or --allow-other-towers") from None
        args.load_s = time.perf_counter() - start
        if args.benchmark:
            run_benchmark(predictor, args)
        elif args.image:
            run_one(predictor, args)
        elif args.data_root or args.split or args.out:
            run_split(predictor, args, run)
        else:
            raise ValueError("give --image (one puzzle), --data-root/--split (a split) or --benchmark N")

    return cli.run(run, traceback=args.traceback)


if __name__ == "__main__":
    sys.exit(main())
