"""Every shipped config loads, differs from the paper's recipe only where it says, and builds its head."""

import importlib

import pytest

from configs import smarter
from smartvlm_jax import reasoner

ABLATIONS = {
    "no_qf": {"model.use_qf": False},
    "dinov2_only": {"model.variant": "dinov2"},
    "siglip_only": {"model.variant": "siglip"},
    "single_image_head": {"model.use_single_image_head": True},
    # not an ablation: the paper recipe on 101 synthetic puzzles with tiny towers (the scale rehearsal)
    "smart101_tiny": {
        "synthetic.enabled": True,
        "synthetic.puzzles": "all",
        "synthetic.per_puzzle": 1000,
        "synthetic.workers": 2,
        "towers.tiny": True,
    },
}


def _flat(config, prefix=""):
    out = {}
    for key, value in config.items():
        if hasattr(value, "items"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_paper_recipe():
    c = smarter.get_config()
    assert (c.batch_size, c.num_epochs, c.seed, c.data.data_tot) == (128, 3, 0, 1000)
    assert (c.optim.name, c.optim.lr, c.optim.b1, c.optim.b2, c.optim.eps) == ("adamw", 3e-4, 0.9, 0.98, 1e-8)
    assert (c.optim.weight_decay, c.optim.grad_clip, c.optim.warmup_steps) == (0.2, 1.0, 10)
    assert (c.model.variant, c.model.use_qf, c.model.reference_quirks) == ("fused", True, False)
    assert c.early_stop_patience == 3 and c.cache_features


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_changes_only_its_fields(name):
    base = _flat(smarter.get_config())
    ablation = _flat(importlib.import_module(f"configs.{name}").get_config())
    changed = {k: v for k, v in ablation.items() if base[k] != v}
    assert changed == ABLATIONS[name]
    cfg = importlib.import_module(f"configs.{name}").get_config().model
    cfg.puzzle_ids, cfg.num_classes = [1, 16], [20, 27]
    reasoner.build(cfg)  # the variant is one the head knows


def test_older_run_configs_are_upgraded_in_one_place():
    """A run config written before a field existed gets the value that reproduces what that run did; a
    current config passes through untouched (its defaults live in configs/ alone)."""
    from smartvlm_jax import train

    current = smarter.get_config()
    assert train.upgrade_config(current) is current
    for dotted, then in train.checks.ADDED_FIELDS.items():
        flat = _flat(current)
        assert dotted in flat, f"{dotted} is no field of configs/smarter.py"
        old = smarter.get_config()
        *parents, name = dotted.split(".")
        section = old
        for parent in parents:
            section = section[parent]
        del section[name]
        upgraded = train.upgrade_config(old)
        assert _flat(upgraded)[dotted] == then and dotted not in _flat(old), dotted
        assert {k: v for k, v in _flat(upgraded).items() if k != dotted} == _flat(old)


def test_member_names_exclude_every_workdir_entry():
    from smartvlm_jax import train
    from smartvlm_jax.workdir import Workdir

    wd = Workdir("/x")
    for entry in (wd.best_model, wd.checkpoints, wd.config_file, wd.results, wd.tensorboard, wd.synthetic):
        assert entry.name in train.RESERVED_NAMES
        with pytest.raises(ValueError, match="not a plain directory name"):
            train.check_members(smarter.get_config(), [train.Member(entry.name, 0)])
