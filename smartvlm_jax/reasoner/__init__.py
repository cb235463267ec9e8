"""The trainable SMARTER head: config, Flax module, loss, predictions and model dirs.

cfg = reasoner.default_config(); cfg.puzzle_ids = [...]; cfg.num_classes = [...]
model = reasoner.build(cfg)
logits = model.apply(variables, vision, text, puzzle_ids, train=False)   # [B, K, C_max]
"""

from smartvlm_jax.reasoner.checkpoint import load, param_summary, save
from smartvlm_jax.reasoner.config import MASKED_LOGIT, default_config, validate
from smartvlm_jax.reasoner.losses import loss, predictions
from smartvlm_jax.reasoner.model import SmarterHead, build
from smartvlm_jax.reasoner.predictor import Predictor
from smartvlm_jax.reasoner.presence import row_presence

__all__ = [
    "MASKED_LOGIT",
    "Predictor",
    "SmarterHead",
    "build",
    "default_config",
    "load",
    "loss",
    "param_summary",
    "predictions",
    "row_presence",
    "save",
    "validate",
]
