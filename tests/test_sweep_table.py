"""The sweep's pieces that need no training: configs/paper.py's rows, members and grid, and the table
(mean ± std over members, greedy and chance rows, markdown, CSV, PNG)."""

import csv
import math

import numpy as np
import pytest
from PIL import Image

from configs import dinov2_only, no_qf, paper, smarter
from smartvlm_jax import metrics, reports, sweep


def member(s_acc: float, o_acc: float, counting: float, math_: float) -> dict:
    """A member's results.json with two skill classes and one type outside them."""
    return {
        "test": {
            "S_acc": s_acc,
            "O_acc": o_acc,
            "per_skill": {
                "counting": {"S_acc": counting, "O_acc": counting + 0.1, "num_puzzles": 2},
                "math": {"S_acc": math_, "O_acc": math_ + 0.1, "num_puzzles": 1},
            },
            "per_other_type": {"order": {"S_acc": 0.5, "O_acc": 0.6, "num_puzzles": 1}},
            "greedy_S_acc": 0.08,
            "greedy_O_acc": 0.14,
            "greedy_per_skill": {"counting": {"S_acc": 0.1, "O_acc": 0.2, "num_puzzles": 2}},
            "chance_S_acc": 0.05,
            "chance_O_acc": 0.2,
            "chance_per_skill": {"counting": {"S_acc": 0.04, "O_acc": 0.2, "num_puzzles": 2}},
        }
    }


def test_rows_are_the_configs_differences_from_smarter():
    rows = paper.get_config().row_overrides
    assert rows.smarter.to_dict() == {}
    assert rows.no_qf.to_dict() == {"model": {"use_qf": False}}
    assert rows.dinov2_only.to_dict() == {"model": {"variant": "dinov2"}}
    assert rows.siglip_only.to_dict() == {"model": {"variant": "siglip"}}
    assert rows.single_image_head.to_dict() == {"model": {"use_single_image_head": True}}
    assert rows.baseline.model.head == "baseline" and rows.baseline.optim.name == "adam"
    assert "cache_features" not in rows.baseline  # the sweep trains every row on the feature store
    # A row's config is the ablation's config wherever the sweep does not set the shared inputs.
    config = paper.get_config()
    for row, module in (("no_qf", no_qf), ("dinov2_only", dinov2_only), ("smarter", smarter)):
        built = sweep.row_config(config, row, {}).to_dict()
        expected = module.get_config().to_dict()
        assert {k: built[k] for k in expected} == expected
        assert not set(built) & set(sweep.SWEEP_FIELDS)
    smoke_row = sweep.row_config(paper.get_config("smoke"), "no_qf", {"data.root": "/d"})
    assert smoke_row.synthetic.enabled and smoke_row.towers.tiny and not smoke_row.model.use_qf
    assert smoke_row.data.root == "/d"
    with pytest.raises(ValueError, match="'smoke' or nothing"):
        paper.get_config("smok")


def test_row_names_members_and_grid():
    config = paper.get_config("smoke")
    assert sweep.row_names(config) == ["smarter", "no_qf", "dinov2_only", "siglip_only", "single_image_head"]
    config.baseline = True
    assert sweep.row_names(config)[-1] == "baseline"
    config.rows = "smarter,no_qv"
    with pytest.raises(ValueError, match=r"--config.rows='smarter,no_qv': no_qv is not one of"):
        sweep.row_names(config)
    config.rows = "smarter,no_qf,smarter"
    with pytest.raises(
        ValueError, match=r"--config.rows='smarter,no_qf,smarter' names smarter more than once"
    ):
        sweep.row_names(config)
    config.rows, config.baseline = ",", False
    with pytest.raises(ValueError, match=r"--config.rows=',' names no row; choose from baseline, "):
        sweep.row_names(config)
    config = paper.get_config("smoke")
    config.seed, config.seeds = 4, 2
    assert [(s, m.name, m.seed, m.lr) for s, m in sweep.members_of(config)] == [
        ({}, "seed_4", 4, None),
        ({}, "seed_5", 5, None),
    ]
    config.grid.lr, config.grid.pdrop = "1e-3, 3e-4", "0.1"
    members = sweep.members_of(config)
    assert [m.name for _, m in members] == [
        f"lr{lr}_pdrop0.1_seed_{seed}" for lr in ("0.001", "0.0003") for seed in (4, 5)
    ]
    assert members[2][1].lr == 3e-4 and members[2][1].pdrop == 0.1 and members[2][1].weight_decay is None
    assert sweep.setting_label(members[0][0]) == "lr 0.001, pdrop 0.1"
    config.grid.weight_decay = "0.1,x"
    with pytest.raises(ValueError, match=r"--config.grid.weight_decay='0.1,x' is not a comma-separated"):
        sweep.members_of(config)
    config.grid.weight_decay, config.seeds = "", 0
    with pytest.raises(ValueError, match=r"--config.seeds=0 must be >= 1"):
        sweep.members_of(config)


def test_mean_and_std_over_members():
    values = [metrics.group_accuracies(member(s, 0.3, 0.2, 0.4)["test"]) for s in (0.1, 0.2, 0.6)]
    stats = metrics.mean_and_std(values)
    assert stats[("S_acc", "all")] == pytest.approx((0.3, float(np.std([0.1, 0.2, 0.6], ddof=1))))
    assert stats[("O_acc", "counting")] == pytest.approx((0.3, 0.0))
    assert stats[("S_acc", "order")] == (0.5, 0.0)
    one = metrics.mean_and_std(values[:1])
    assert one[("S_acc", "all")][0] == 0.1 and math.isnan(one[("S_acc", "all")][1])
    greedy = metrics.group_accuracies(member(0.1, 0.3, 0.2, 0.4)["test"], "greedy_")
    assert greedy == {
        ("S_acc", "all"): 0.08,
        ("S_acc", "counting"): 0.1,
        ("O_acc", "all"): 0.14,
        ("O_acc", "counting"): 0.2,
    }
    with pytest.raises(ValueError, match="at least one member"):
        metrics.mean_and_std([])


def test_table_markdown_csv_and_png(tmp_path):
    smarter_members = [
        member(0.30, 0.40, 0.2, 0.4),
        member(0.34, 0.44, 0.3, 0.5),
        member(0.32, 0.42, 0.25, 0.6),
    ]
    rows = reports.sweep_rows({"smarter": smarter_members, "no_qf": [member(0.20, 0.30, 0.1, 0.2)]})
    assert [(r.label, r.members) for r in rows] == [
        ("smarter", 3),
        ("no_qf", 1),
        ("greedy", 0),
        ("chance", 0),
    ]
    assert reports.table_groups(rows) == ["all", "counting", "math", "order"]  # skill classes, then others
    text = reports.format_sweep_table(rows, "Test accuracy")
    lines = text.splitlines()
    assert lines[0] == "# Test accuracy"
    assert "| row | seeds | all | counting | math | order* |" in lines
    assert "| smarter | 3 | 32.0 ± 2.0 | 25.0 ± 5.0 | 50.0 ± 10.0 | 50.0 ± 0.0 |" in lines
    assert "| no_qf | 1 | 20.0 | 10.0 | 20.0 | 50.0 |" in lines  # one member: no std
    assert "| greedy | - | 8.0 | 10.0 | - | - |" in lines
    assert "| chance | - | 5.0 | 4.0 | - | - |" in lines
    o_part = text[text.index("## O_acc") :]
    assert "| smarter | 3 | 42.0 ± 2.0 | 35.0 ± 5.0 | 60.0 ± 10.0 | 60.0 ± 0.0 |" in o_part
    assert "| chance | - | 20.0 | 20.0 | - | - |" in o_part
    with open(reports.write_sweep_csv(rows, tmp_path / "table.csv"), newline="") as f:
        records = list(csv.DictReader(f))
    first = next(r for r in records if (r["row"], r["metric"], r["group"]) == ("smarter", "S_acc", "all"))
    assert float(first["mean"]) == pytest.approx(0.32) and float(first["std"]) == pytest.approx(0.02)
    assert next(r for r in records if r["row"] == "greedy")["std"] == ""
    png = reports.plot_sweep_table(rows, tmp_path / "table.png", "Test accuracy")
    with Image.open(png) as image:
        assert image.size[0] >= 700 and image.size[1] >= 700
    with pytest.raises(ValueError, match="row 'x': member 0 has no 'test' results"):
        reports.sweep_rows({"x": [{"val": {}}]})


def test_a_rerun_with_another_config_is_refused(tmp_path):
    config = paper.get_config("smoke")
    path = tmp_path / "config.json"
    path.write_text(config.to_json_best_effort())
    sweep.check_same_sweep(config, path)  # the same config
    config.seeds, config.rows, config.member_plots = 5, "smarter", True  # which rows and members: allowed
    sweep.check_same_sweep(config, path)
    config.num_epochs, config.optim.lr = 2, 0.5
    expected = (
        r"holds a sweep of another config: --config.num_epochs=2 \(it holds 12\), "
        r"--config.optim.lr=0.5 \(it holds 0.001\); use a new --workdir"
    )
    with pytest.raises(ValueError, match=expected):
        sweep.check_same_sweep(config, path)
    path.write_text(smarter.get_config().to_json_best_effort())  # a main run's workdir
    with pytest.raises(ValueError, match=rf"{tmp_path} holds a training run, not a sweep"):
        sweep.check_same_sweep(config, path)


def test_bad_sweeps_are_refused_before_any_work(tmp_path):
    """A run config, or a member no row can train, is refused before anything is written (so the
    corrected command is not refused as "another config" of the same workdir)."""
    with pytest.raises(ValueError, match="is a run config, not a sweep config .* pass configs/paper.py"):
        sweep.run_sweep(smarter.get_config(), tmp_path / "a")
    config = paper.get_config("smoke")
    config.grid.pdrop = "1.5"
    with pytest.raises(ValueError, match=r"pdrop=1.5 must lie in \[0, 1\)"):
        sweep.run_sweep(config, tmp_path / "b")
    assert not (tmp_path / "b" / "config.json").exists()
    config = paper.get_config("smoke")
    config.parallel_rows = 0
    with pytest.raises(ValueError, match=r"--config.parallel_rows=0 must be >= 1"):
        sweep.run_sweep(config, tmp_path / "c")
    assert not (tmp_path / "c" / "config.json").exists()
