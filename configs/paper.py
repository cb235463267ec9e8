"""The SMARTER paper's table: the final model beside its four ablations, every row over several seeds.

  python -m smartvlm_jax.sweep --config configs/paper.py --workdir workdirs/paper \
    --config.data.root=/data/SMART101-release-v1/SMART101-Data \
    --config.towers.dinov2=/models/dinov2-base --config.towers.siglip=/models/siglip-base-patch16-224
  python -m smartvlm_jax.sweep --config configs/paper.py:smoke --workdir workdirs/paper_smoke  # minutes, CPU

The config is a run config (configs/smarter.py, or configs/smoke.py with ``:smoke``) that every row starts
from, plus the sweep's fields below. A row is one of this folder's configs applied as its difference from
configs/smarter.py (``no_qf``: ``model.use_qf=False``; ``dinov2_only``: ``model.variant="dinov2"``; ...),
so the table always trains what those configs train. ``seeds`` members per row (seeds ``seed``,
``seed + 1``, ...) train at once in one jitted step; ``grid`` adds head hyperparameters as more members.
docs/sweep.md has the layout, the cost and the numbers.
"""

import ml_collections

from configs import baseline, dinov2_only, no_qf, siglip_only, single_image_head, smarter, smoke

# The rows a sweep can run, in the paper's order; "baseline" is the SMART paper's model (ResNet-50 + BERT).
ROW_CONFIGS = {
    "smarter": smarter,
    "no_qf": no_qf,
    "dinov2_only": dinov2_only,
    "siglip_only": siglip_only,
    "single_image_head": single_image_head,
    "baseline": baseline,
}
# A row keeps the sweep's own choice of these: the baseline config runs its towers in every step to spare
# 34 GB of token states at full size, while a sweep trains every row on the shared feature store.
KEPT_FIELDS = ("cache_features",)


def difference(config: dict, base: dict) -> dict:
    """The fields of ``config`` whose value differs from ``base``'s, nested like them."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            sub = difference(value, base[key])
            if sub:
                out[key] = sub
        elif key not in base or base[key] != value:
            out[key] = value
    return out


def row_overrides() -> ml_collections.ConfigDict:
    """Each row's fields as its config sets them against configs/smarter.py."""
    reference = smarter.get_config().to_dict()
    rows = ml_collections.ConfigDict()
    for name, module in ROW_CONFIGS.items():
        diff = difference(module.get_config().to_dict(), reference)
        for field in KEPT_FIELDS:
            diff.pop(field, None)
        rows[name] = diff
    return rows


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "smoke"):
        raise ValueError(f"configs/paper.py:{arg}: the argument is 'smoke' or nothing")
    c = smoke.get_config() if arg == "smoke" else smarter.get_config()
    c.seeds = 3  # members per row: seeds seed, seed + 1, ...; they vary initialisation and dropout
    c.rows = "smarter,no_qf,dinov2_only,siglip_only,single_image_head"  # rows of the table, in order
    c.baseline = False  # also the SMART baseline row (set towers.resnet and towers.bert; tiny: built)
    c.row_overrides = row_overrides()  # what each row changes (read from configs/<row>.py)
    c.grid = ml_collections.ConfigDict()  # head hyperparameters as more members: comma lists, "" = the run's
    c.grid.lr = ""  # e.g. "1e-3,3e-4": every seed once with each peak learning rate
    c.grid.weight_decay = ""
    c.grid.pdrop = ""
    c.member_plots = False  # each member's per-puzzle/per-skill plots and curves.png (table.png: always)
    # Rows trained at once, each in a thread: one row's tracing, evaluation and saves overlap the other's
    # steps. 1: one after another. (Multi-process jobs always train one row at a time.)
    c.parallel_rows = 2
    return c
