"""The report pages in headless Chromium (Selenium): the rendered headline against results.json, the
gallery's cards and filters against the predictions file, the sweep page's table, deltas and links, and
no console errors."""

import json

import numpy as np
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from smartvlm_jax import reports
from smartvlm_jax.report import predictions as predictions_lib
from tests.report import browser

pytestmark = pytest.mark.slow
PAGE_SIZE = 48  # gallery.js
ROWS = ("smarter", "no_qf", "dinov2_only", "siglip_only", "single_image_head")  # the session's sweep


def _text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def _cards(driver) -> list[dict]:
    return [
        {
            "puzzle": int(c.get_attribute("data-puzzle")),
            "instance": int(c.get_attribute("data-instance")),
            "correct": c.get_attribute("data-correct") == "true",
            "confidence": float(c.get_attribute("data-confidence")),
        }
        for c in driver.find_elements(By.CSS_SELECTOR, "#gallery .card")
    ]


def test_run_page_headline_gallery_and_filters(smoke_run, driver):
    results = reports.load_results(smoke_run)
    test = results["test"]
    pred = predictions_lib.load(smoke_run / "test_predictions.npz")
    browser.open_page(driver, smoke_run / "report.html")
    assert browser.console_errors(driver) == []
    headline = {
        "s-acc": "S_acc",
        "o-acc": "O_acc",
        "greedy-s-acc": "greedy_S_acc",
        "chance-s-acc": "chance_S_acc",
        "greedy-o-acc": "greedy_O_acc",
        "chance-o-acc": "chance_O_acc",
    }
    for element_id, key in headline.items():
        value = test[key]
        assert _text(driver, element_id) == f"{100 * value:.1f}", element_id
    assert _text(driver, "best-epoch") == str(results["best_epoch"])
    assert _text(driver, "n-test") == str(test["n"])

    n = len(pred["puzzle_ids"])
    assert _text(driver, "match-count") == str(n)
    shown = _cards(driver)
    assert len(shown) == min(n, PAGE_SIZE)
    order = list(zip(pred["puzzle_ids"].tolist(), pred["instance_ids"].tolist(), strict=True))
    assert [(c["puzzle"], c["instance"]) for c in shown] == order[:PAGE_SIZE]  # split order, first page

    # the puzzle with the most wrong answers, then "wrong": exactly its wrong instances
    wrong = ~pred["s_correct"]
    puzzle = int(np.bincount(pred["puzzle_ids"][wrong]).argmax())
    expected = set(pred["instance_ids"][(pred["puzzle_ids"] == puzzle) & wrong].tolist())
    assert 0 < len(expected) <= PAGE_SIZE
    Select(driver.find_element(By.ID, "f-puzzle")).select_by_value(str(puzzle))
    assert _text(driver, "match-count") == str(int((pred["puzzle_ids"] == puzzle).sum()))
    Select(driver.find_element(By.ID, "f-status")).select_by_value("wrong")
    assert _text(driver, "match-count") == str(len(expected))
    shown = _cards(driver)
    assert {c["instance"] for c in shown} == expected
    assert all(c["puzzle"] == puzzle and not c["correct"] for c in shown)

    # "confidently wrong", one click from a reset gallery: every wrong answer, most confident first
    driver.find_element(By.ID, "reset").click()
    assert _text(driver, "match-count") == str(n)
    driver.find_element(By.ID, "confidently-wrong").click()
    assert _text(driver, "match-count") == str(int(wrong.sum()))
    shown = _cards(driver)
    assert not any(c["correct"] for c in shown)
    top = np.sort(pred["confidence"][wrong])[::-1][: len(shown)]
    assert np.allclose([c["confidence"] for c in shown], top, atol=1e-4)
    first = driver.find_element(By.CSS_SELECTOR, "#gallery .card")
    assert first.find_element(By.TAG_NAME, "img").get_attribute("src").startswith("data:image/webp;base64,")
    assert len(first.find_elements(By.CSS_SELECTOR, "ol li")) == 5
    driver.find_element(By.ID, "next").click()
    assert "page 2 of" in _text(driver, "page-info") or int(wrong.sum()) <= PAGE_SIZE
    assert browser.console_errors(driver) == []


def test_sweep_page_table_deltas_and_member_links(paper_sweep, driver):
    root, _, done = paper_sweep
    assert f"report:    {root / 'report.html'}" in done.stdout
    browser.open_page(driver, root / "report.html")
    assert browser.console_errors(driver) == []
    rows = driver.find_elements(By.CSS_SELECTOR, "#table-S_acc tr[data-row]")
    labels = [r.get_attribute("data-row") for r in rows]
    assert labels == [*ROWS, "greedy", "chance"]
    table = (root / "table.md").read_text()
    smarter_all = next(line for line in table.splitlines() if line.startswith("| smarter |")).split(" | ")[2]
    row = driver.find_element(By.CSS_SELECTOR, "#table-S_acc tr[data-row=smarter]")
    assert row.find_elements(By.TAG_NAME, "td")[2].text == smarter_all  # the table.md's "all" cell

    # deltas: smarter against no_qf, each the members' mean per puzzle
    def mean(row_name: str, puzzle: int) -> float:
        members = [reports.load_results(root / row_name / f"seed_{s}")["test"] for s in (0, 1)]
        return np.mean([m["per_puzzle"][puzzle]["S_acc"] for m in members])

    rows = driver.find_elements(By.CSS_SELECTOR, "#delta-table tr[data-puzzle]")
    assert len(rows) == 11
    deltas = {}
    for r in rows:
        cells = [c.text for c in r.find_elements(By.TAG_NAME, "td")]
        deltas[int(r.get_attribute("data-puzzle"))] = float(cells[-1])
    for puzzle, delta in deltas.items():
        assert delta == pytest.approx(100 * (mean("smarter", puzzle) - mean("no_qf", puzzle)), abs=0.051)
    assert list(deltas.values()) == sorted(deltas.values(), reverse=True)
    wins = sum(d > 0 for d in deltas.values())
    assert _text(driver, "delta-summary").startswith(f"smarter wins {wins}, ")
    Select(driver.find_element(By.ID, "row-a")).select_by_visible_text("no_qf")
    Select(driver.find_element(By.ID, "row-b")).select_by_visible_text("smarter")
    assert _text(driver, "delta-summary").startswith(f"no_qf wins {sum(d < 0 for d in deltas.values())}, ")

    links = [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "a.member-link")]
    assert len(links) == 2 * len(ROWS)
    for link in links:
        driver.get(link)
        member_dir = root / link.split("/run/")[-1].removesuffix("/report.html")
        member = json.loads((member_dir / "results.json").read_text())
        assert _text(driver, "s-acc") == f"{100 * member['test']['S_acc']:.1f}"
        assert driver.find_elements(By.CSS_SELECTOR, "#gallery .card")
        assert browser.console_errors(driver) == []
