"""The SMART paper's baseline (SPEC 5 "Baseline"): ResNet-50 pooled image features, frozen BERT token states
through a bidirectional GRU, ReLU MLPs and LSTM decoders; Adam(lr, betas (0.9, 0.99)), no clipping, no
schedule. Everything else (data, batch, epochs, early stopping, evaluation) is the SMARTER recipe's.

  python -m smartvlm_jax.main --config configs/baseline.py --workdir workdirs/baseline \
    --config.data.root=/data/SMART101-release-v1/SMART101-Data \
    --config.towers.resnet=/models/resnet-50 --config.towers.bert=/models/bert-base-uncased

mBERT instead of BERT: --config.towers.bert=/models/bert-base-multilingual-cased. Towers run inside every
step, as in the reference (cache_features=False): the token-state cache is 338 KB per instance, ~34 GB for
all 101 puzzles at data_tot 1000 (README, "The SMART baseline"); --config.cache_features=True caches them
for runs on a few puzzles.
"""

from configs import smarter
from smartvlm_jax.reasoner import config as head_config


def get_config():
    c = smarter.get_config()
    c.model = head_config.baseline_config()  # head "baseline", features "resnet": R 128, H 256, L 110 tokens
    c.optim.name = "adam"  # plain Adam (torch.optim.Adam), no decoupled weight decay
    c.optim.b2 = 0.99  # betas (0.9, 0.99)
    c.optim.weight_decay = 0.0  # Adam has none (the field is read by AdamW only)
    c.optim.grad_clip = 0.0  # no gradient clipping
    c.optim.schedule = "constant"  # no schedule: optim.lr at every step
    c.optim.warmup_steps = 0  # no warm-up
    c.cache_features = False  # ResNet-50 + BERT run in the step (the token-state cache is large)
    return c
