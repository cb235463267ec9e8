"""The paper recipe (configs/smarter.py) on SMART-101-shaped synthetic data with the smoke run's tiny towers.

All 101 puzzles, 1000 instances each (data_tot 1000: 101,000 instances, what the paper reads of the
release), batch 128, 3 epochs; the puzzles are written into the workdir by 2 processes if absent. The
rehearsal of a full-size run on any machine (benchmarks/scale.py times it at 1k, 10k and 100k instances):

  python -m smartvlm_jax.main --config configs/smart101_tiny.py --workdir workdirs/smart101_tiny \
    [--config.data.split_type=puzzle] [--config.data.root=DIR --config.synthetic.enabled=False]
"""

from configs import smarter


def get_config():
    c = smarter.get_config()
    c.synthetic.enabled = True
    c.synthetic.puzzles = "all"
    c.synthetic.per_puzzle = 1000
    c.synthetic.workers = 2
    c.towers.tiny = True
    return c
