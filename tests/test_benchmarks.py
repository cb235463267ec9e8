"""benchmarks.timing (the one timing loop), and benchmarks.throughput end to end in its tiny mode: the JSON
report and the markdown table."""

from __future__ import annotations

import json

import jax.numpy as jnp
import pytest
import torch

from benchmarks import throughput, timing


def test_timing_leaves_out_warm_up_calls_and_rotates_the_order():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = timing.time_rounds(fns, repeats=3, warmup=2)
    assert calls == [*"aabbcc", *"abc", *"bca", *"cab"]
    assert all(len(t.times) == 3 for t in times.values())
    summary = timing.time_call(lambda: jnp.ones(8) * 2, repeats=4).summary(items=10)
    assert set(summary) == {"median_s", "min_s", "max_s", "spread", "per_s", "repeats"}
    assert summary["repeats"] == 4 and summary["min_s"] <= summary["median_s"] <= summary["max_s"]
    assert summary["per_s"] == pytest.approx(10 / summary["median_s"]) and summary["spread"] >= 0
    one = timing.time_call(lambda: None, repeats=1, warmup=0).summary()
    assert one["repeats"] == 1 and one["spread"] == 0 and one["min_s"] == one["max_s"]
    x, t = jnp.arange(3), torch.arange(3)
    assert timing.wait(x) is x and timing.wait(t) is t and timing.wait({"a": x, "b": (t, 1)})["a"] is x
    with pytest.raises(ValueError, match="repeats"):
        timing.time_call(lambda: None, repeats=0)


@pytest.mark.slow
def test_throughput_tiny_report(tmp_path, capfd):
    out = tmp_path / "results.json"
    rows = ["towers_forward", "inference", "input_pipeline"]
    throughput.main(
        [
            "--tiny",
            "--repeats",
            "2",
            "--rows",
            ",".join(rows),
            "--out",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
        ]
    )
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
    captured = capfd.readouterr()
    table = captured.out
    for noise in ("Writing model shards", "Loading weights", "bos_token_id", "eos_token_id", "it/s]"):
        assert noise not in captured.err + captured.out, noise  # transformers' bars and notices
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + len(rows) + 2  # header, rule, one line per row, matmul, tower FLOP/s
    assert all(line.count("|") == 8 for line in lines)
    assert "inference (images -> answers)" in table and "x |" in lines[2]


@pytest.mark.slow
def test_members_memory_grows_by_one_state_per_member():
    """benchmarks.members on the smoke head: the step's arguments are N states plus the shared batch,
    and the donated state is aliased to the output (the update is in place, per member)."""
    from benchmarks import members

    one, three = (members.memory("smoke", n) for n in (1, 3))
    assert three["state"] == 3 * one["state"]
    batch = one["arguments"] - one["state"]
    assert 0 < batch < 0.01 * one["state"]
    assert three["arguments"] - three["state"] < 1.1 * batch  # + the members' hyperparameters
    assert three["aliased"] == three["state"]
    assert three["temp"] < 3 * one["temp"] * 1.1
    # the --speed loop runs: donated state, random batches (3 members: the step compiled above, loaded from
    # the session's compilation cache)
    seconds = members.speed("smoke", 3, steps=2)
    assert 0 < seconds < 60
