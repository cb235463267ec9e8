"""The report page of a 101-puzzle run with 20,000 test instances: its size, the time to write it and to
load it in headless Chromium; and the screenshots of docs/ (``--shots``).

No such run can be trained on a 2-core CPU in minutes, so the run is built, and says so: the data are
real synthetic SMART-format puzzles (``data.synthetic``, every id 1..101, ``--per-puzzle`` instances a
puzzle; written once into ``--out/data``) and all their instances (the first ``--instances``) are the
"test split"; the predictions are drawn at random (right ~35 % of the time, else another option's value,
with top-3 probabilities), and ``results.json`` holds their metrics (``metrics.compute_metrics``). The
page depends on the number of instances, the sample of cards and the images, not on whether the answers
came from a trained head, so its size and load time are those of a real run of that size. The workdir's
``best_model/`` and ``config.json`` are the smoke run's (``--model-from``), so only the predictions file
is fake: ``source`` matches, and the page reads it rather than running a head.

    python -m benchmarks.report_page --model-from workdirs/smoke --out /tmp/report_bench
    python -m benchmarks.report_page --shots RUN_WORKDIR SWEEP_WORKDIR --docs docs   # the screenshots

Prints and writes ``--out/report_bench.json``: instances, cards, page MB, seconds to write the page (the
thumbnails), and Chromium's navigation timing (DOMContentLoaded, load) plus the "confidently wrong" click.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import time

import numpy as np

from smartvlm_jax import cli, metrics, puzzles, reports
from smartvlm_jax.data import smart101, synthetic
from smartvlm_jax.report import pages
from smartvlm_jax.report import predictions as predictions_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def fake_predictions(rows: list[smart101.Row], rng: np.random.Generator, right: float = 0.35) -> dict:
    """Per-instance arrays of a predictions file for ``rows``: the true answer with probability ``right``,
    else a wrong option's value; top-3 probabilities drawn around that answer."""
    labels = smart101.label_arrays(rows)
    n, k = len(rows), puzzles.NUM_DECODE_STEPS
    pick = rng.integers(0, 5, n)
    correct = rng.random(n) < right
    option = np.where(correct | (pick == labels["answer_index"]), labels["answer_index"], pick)
    preds = labels["option_values"][np.arange(n), option]
    preds = np.where(correct[:, None], labels["labels"], preds)
    p1 = rng.uniform(0.25, 1.0, (n, k))
    p2 = (1 - p1) * rng.uniform(0.5, 1.0, (n, k))
    top_probs = np.stack([p1, p2, (1 - p1 - p2) * rng.uniform(0, 1, (n, k))], -1).astype(np.float32)
    top_values = np.stack([preds, preds + 1, np.maximum(preds - 1, 0)], -1)
    s_correct, o_correct = metrics.correctness(
        preds, labels["labels"], labels["puzzle_ids"], labels["option_values"], labels["answer_index"]
    )
    is_seq = np.isin(labels["puzzle_ids"], list(puzzles.SEQUENCE_PUZZLES))
    return {
        "puzzle_ids": labels["puzzle_ids"],
        "instance_ids": np.array([r.instance_id for r in rows], np.int64),
        "preds": preds,
        "labels": labels["labels"],
        "option_values": labels["option_values"],
        "answer_index": labels["answer_index"],
        "option_index": metrics.select_options(preds, labels["puzzle_ids"], labels["option_values"]),
        "top_values": top_values,
        "top_probs": top_probs,
        "confidence": np.where(is_seq, top_probs[:, :, 0].prod(1), top_probs[:, 0, 0]).astype(np.float32),
        "s_correct": s_correct,
        "o_correct": o_correct,
    }


def build_workdir(
    model_from: pathlib.Path, out: pathlib.Path, per_puzzle: int, instances: int
) -> pathlib.Path:
    data = out / "data"
    if not (data / "puzzle_info.csv").is_file():
        t = time.perf_counter()
        synthetic.write_dataset(str(data), per_puzzle, seed=0, puzzle_ids="all", workers=2)
        print(f"data: 101 puzzles x {per_puzzle} in {time.perf_counter() - t:.0f} s", flush=True)
    rows = smart101.read_rows(data)[:instances]
    workdir = out / "run"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    shutil.copytree(model_from / "best_model", workdir / "best_model")
    config = json.loads((model_from / "config.json").read_text())
    config["data"].update(root=str(data), puzzle_ids="all")
    (workdir / "config.json").write_text(json.dumps(config, indent=2))
    record = {
        "store": str(out),
        "format": 1,
        "splits": {"test": {"entry": str(out / "fake-entry"), "rows": len(rows)}},
    }
    (workdir / "features.json").write_text(json.dumps(record))
    arrays = fake_predictions(rows, np.random.default_rng(0))
    arrays["source"] = predictions_lib.source_of(workdir, "test")
    predictions_lib.save(arrays, predictions_lib.path(workdir, "test"))
    num_classes = {int(p): 1000 for p in arrays["puzzle_ids"]}
    test = metrics.compute_metrics(
        arrays["preds"],
        arrays["labels"],
        arrays["puzzle_ids"],
        arrays["option_values"],
        arrays["answer_index"],
        num_classes,
    )
    test["chance_S_acc"], test["chance_O_acc"] = None, 0.2
    reports.write_results(workdir, {"test": test, "best_epoch": 0, "epochs": 0}, merge=False)
    return workdir


def load_timing(page: pathlib.Path) -> dict:
    sys.path.insert(0, str(REPO))
    from tests.report import browser

    with browser.chromium() as driver:
        browser.open_page(driver, page)
        timing = driver.execute_script(
            "const t = performance.timing; return {dom: t.domContentLoadedEventEnd - t.navigationStart,"
            " load: t.loadEventEnd - t.navigationStart};"
        )
        timing["cards"] = int(driver.find_element("id", "match-count").text)
        timing["click_ms"] = driver.execute_script(
            "const t0 = performance.now(); document.getElementById('confidently-wrong').click();"
            " return performance.now() - t0;"
        )
        timing["cards_shown"] = len(driver.find_elements("css selector", "#gallery .card"))
        timing["console_errors"] = browser.console_errors(driver)
    return timing


def shots(run: pathlib.Path, sweep: pathlib.Path, docs: pathlib.Path) -> None:
    sys.path.insert(0, str(REPO))
    from selenium.webdriver.common.by import By

    from tests.report import browser

    with browser.chromium(width=1400, height=1000) as driver:
        browser.open_page(driver, run / "report.html")
        driver.find_element(By.ID, "confidently-wrong").click()
        browser.screenshot(driver, docs / "report_run.png", max_height=3400)
        driver.set_window_size(1400, 1000)
        browser.open_page(driver, sweep / "report.html")
        browser.screenshot(driver, docs / "report_sweep.png", max_height=3400)
    print(f"{docs / 'report_run.png'}\n{docs / 'report_sweep.png'}")


def main(argv: list[str] | None = None) -> None:
    cli.keep_jax_off_absent_accelerators()  # an installed libtpu or CUDA plugin stays quiet here
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model-from", type=pathlib.Path, help="a finished run (its best_model, config.json)"
    )
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("/tmp/report_bench"))
    parser.add_argument("--per-puzzle", type=int, default=199)
    parser.add_argument("--instances", type=int, default=20_000)
    parser.add_argument("--shots", nargs=2, type=pathlib.Path, metavar=("RUN", "SWEEP"))
    parser.add_argument("--docs", type=pathlib.Path, default=REPO / "docs")
    args = parser.parse_args(argv)
    if args.shots:
        shots(*args.shots, args.docs)
        return
    if args.model_from is None:
        parser.error("--model-from RUN_WORKDIR is required (or --shots)")
    workdir = build_workdir(args.model_from, args.out, args.per_puzzle, args.instances)
    t = time.perf_counter()
    page = pages.write_run_page(workdir)
    write_s = time.perf_counter() - t
    result = {
        "instances": args.instances,
        "page_mb": page.stat().st_size / 1e6,
        "write_s": write_s,
        **load_timing(page),
    }
    (args.out / "report_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
