"""Members: N heads trained at once with jax.vmap, each equal to the single run of its own config.

The group trains on test_train's small config with patience 0, so per-member early stopping happens: the
member with a tiny learning rate cannot improve its val S_acc at epoch 2 and stops there (frozen) while
seed1 trains on to epoch 3. Each member is then run alone from its own ``config.json``.
"""

import json
import re
import signal
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from smartvlm_jax import train
from smartvlm_jax.workdir import Workdir
from tests.support.runs import (
    MEMBERS,
    REPO,
    baseline_run_config,
    copy_features,
    losses,
    reusing,
    run_config,
    wait_for_checkpoint,
)


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("group")
    return workdir, train.train_members(run_config(early_stop_patience=0), workdir, MEMBERS, plots=False)


@pytest.mark.slow
def test_each_member_equals_its_single_run(group, tmp_path):
    workdir, results = group
    stopped = {name: r["epochs"] for name, r in results.items()}
    assert stopped == {"seed0": 2, "seed1": 3, "slow": 2}  # per-member early stopping, the others go on
    default = run_config()
    for m in MEMBERS:
        member = Workdir(workdir).member(m.name)
        config = ml_collections.ConfigDict(json.loads(member.config_file.read_text()))
        assert (config.seed, config.data_seed) == (m.seed, 0)
        assert config.model.pdrop == (m.pdrop or default.model.pdrop)
        assert config.optim.lr == (m.lr or default.optim.lr)
        assert config.optim.weight_decay == (m.weight_decay or default.optim.weight_decay)
        assert config.towers.dinov2 == str(workdir / "towers" / "dinov2") and not config.towers.tiny
        copy_features(workdir, tmp_path / m.name)
        single = train.train_and_evaluate(config, tmp_path / m.name)
        grouped, alone = losses(member.root), losses(tmp_path / m.name)
        assert grouped.keys() == alone.keys() and len(grouped) == 13 * stopped[m.name]
        np.testing.assert_allclose(list(grouped.values()), list(alone.values()), atol=1e-5, rtol=0)
        assert results[m.name]["test"] == single["test"], m.name
        for key in ("best_epoch", "epochs", "steps"):
            assert results[m.name][key] == single[key], (m.name, key)
        print(f"{m.name}: max |loss difference| {max(abs(grouped[s] - alone[s]) for s in grouped):.2e}")
        assert json.loads(member.results.read_text())["test"]["S_acc"] == single["test"]["S_acc"]
    # the members differ: their seeds and settings are their own
    assert losses(workdir / "seed0")[1] != losses(workdir / "seed1")[1]


@pytest.mark.slow
def test_a_member_is_a_workdir_for_evaluate_and_predict(group):
    workdir, results = group
    member = workdir / "seed1"
    out = subprocess.run(
        [sys.executable, "-m", "smartvlm_jax.evaluate", "--workdir", str(member)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    assert f"{100 * results['seed1']['test']['S_acc']:.1f}" in out.stdout
    assert (member / "best_model" / "config.json").is_file() and list((member / "tensorboard").iterdir())
    assert not (workdir / "seed1" / "checkpoints").exists() and (workdir / "checkpoints").is_dir()


@pytest.mark.parametrize(
    "member, message",
    [
        (train.Member("checkpoints", 0), "not a plain directory name"),
        (train.Member("a/b", 0), "not a plain directory name"),
        (train.Member("x", 0, lr=0.0), "Member 'x': lr=0.0 must be > 0"),
        (train.Member("x", 0, pdrop=1.0), "Member 'x': pdrop=1.0 must lie in [0, 1)"),
    ],
)
def test_bad_members_name_themselves(member, message, tmp_path):
    with pytest.raises(ValueError, match=re.escape(message)):
        train.train_members(run_config(), tmp_path, [train.Member("ok", 0), member])
    with pytest.raises(ValueError, match="is given 2 times"):
        train.train_members(run_config(), tmp_path, [train.Member("ok", 0), train.Member("ok", 1)])
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_killed_group_resumes_to_the_same_members(group, tmp_path):
    """SIGTERM stops the group at a step (stacked state saved); a rerun resumes every member exactly."""
    workdir, results = group
    copy_features(workdir, tmp_path)
    script = (
        "import json, sys; from tests.support.runs import MEMBERS, run_config; "
        "from smartvlm_jax import train; "
        "r = train.train_members(run_config(early_stop_patience=0, **json.loads(sys.argv[2])), sys.argv[1], "
        "MEMBERS, plots=False); print('RESULT', json.dumps(r['seed0']))"
    )
    extra = json.dumps(reusing(workdir))
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path), extra], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    step = wait_for_checkpoint(tmp_path, proc, after=5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    stopped = json.loads(out.split("RESULT", 1)[1])["stopped_at_step"]
    assert step <= stopped < 39
    resumed = train.train_members(run_config(early_stop_patience=0, **reusing(workdir)), tmp_path, MEMBERS)
    for m in MEMBERS:
        np.testing.assert_allclose(
            [losses(tmp_path / m.name)[s] for s in sorted(losses(workdir / m.name))],
            list(losses(workdir / m.name).values()),
            atol=1e-6,
        )
        assert resumed[m.name]["test"] == results[m.name]["test"]
    assert (tmp_path / "seed0" / "curves.png").is_file()  # plots=True
    with pytest.raises(ValueError, match="holds the checkpoints of other members"):
        train.train_members(run_config(**reusing(workdir)), tmp_path, MEMBERS[:2])


@pytest.mark.slow
def test_baseline_head_trains_as_members(tmp_path):
    config = baseline_run_config(num_epochs=1, max_steps=3)
    members = [train.Member("a", 0), train.Member("b", 1, lr=5e-4)]
    results = train.train_members(config, tmp_path, members, plots=False)
    assert results["a"]["steps"] == results["b"]["steps"] == 3
    assert losses(tmp_path / "a") != losses(tmp_path / "b")
    with pytest.raises(ValueError, match="the baseline head has no dropout"):
        train.train_members(config, tmp_path, [train.Member("c", 0, pdrop=0.1)])
