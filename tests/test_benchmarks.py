"""benchmarks.throughput end to end in its tiny mode: the JSON report and the markdown table."""

from __future__ import annotations

import json

from benchmarks import throughput


def test_throughput_tiny_report(tmp_path, capsys):
    out = tmp_path / "results.json"
    rows = ["towers_forward", "inference", "input_pipeline"]
    throughput.main(["--tiny", "--repeats", "2", "--rows", ",".join(rows), "--out", str(out),
                     "--workdir", str(tmp_path / "work")])  # fmt: skip
    report = json.loads(out.read_text())
    assert list(report["rows"]) == rows
    assert report["config"]["towers"] == "tiny" and report["config"]["repeats"] == 2
    assert {"jax", "torch", "transformers"} <= set(report["machine"]["versions"])
    for key, row in report["rows"].items():
        for side in ("jax", "torch_eager"):
            m = row[side]
            assert m["repeats"] == 2 and m["min_s"] <= m["median_s"] <= m["max_s"], (key, side)
            assert m["per_s"] > 0 and m["spread"] >= 0
        assert row["torch_compile"] is None  # not asked for in the tiny mode
    towers = report["rows"]["towers_forward"]
    assert towers["forward_flops"] > 0
    assert 0 < towers["flop_rates"]["jax"]["fraction_of_matmul"]
    assert report["matmul"]["jax"]["flop_per_s"] > 1e8
    table = capsys.readouterr().out
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + len(rows) + 2  # header, rule, one line per row, matmul, tower FLOP/s
    assert all(line.count("|") == 8 for line in lines)
    assert "inference (images -> answers)" in table and "x |" in lines[2]
