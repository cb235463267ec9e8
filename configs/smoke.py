"""The embedded default: synthetic SMART-format puzzles and tiny random towers (timings: docs/training.md).

  python -m smartvlm_jax.main --config configs/smoke.py --workdir workdirs/smoke

Writes the puzzles, the towers and a sentencepiece tokenizer trained on the synthetic questions into the
workdir if absent, trains the head on cached features, and prints the test table. No torch involved.
"""

from configs import smarter


def get_config():
    c = smarter.get_config()
    c.synthetic.enabled = True
    c.synthetic.per_puzzle = 120
    c.towers.tiny = True
    c.data.data_tot = 120
    c.batch_size = 32
    c.eval_batch_size = 64
    c.num_epochs = 12
    c.early_stop_patience = 100  # short runs are noisy: keep the whole schedule
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.01
    c.checkpoint_every_steps = 50
    c.log_every_steps = 5  # 5 points an epoch on the loss curve (curves.png, TensorBoard)
    return c
