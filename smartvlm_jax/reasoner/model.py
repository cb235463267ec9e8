"""The SMARTER reasoner head (SPEC section 5): per-puzzle image encoders, QF layer, composite
LayerNorm, fusion MLP and per-puzzle answer decoders, for every variant of the config.

Parameter names mirror the reference's modules (im_encoder, q_MLP, qf.mha, qf.crossattention,
qf.intermediate, c.ln, qv_fusion, ans_decoder) so the checkpoint converter is a rename table.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from smartvlm_jax.reasoner import config as config_lib
from smartvlm_jax.reasoner.layers import LayerNorm, Linear, gelu
from smartvlm_jax.reasoner.puzzle_heads import PuzzleHead
from smartvlm_jax.reasoner.qf import QFLayer


class QuestionMLP(nn.Module):
    """q_MLP of the no-QF variant: Linear(768, H) -> GELU -> Linear(H, R) (the caller adds a GELU)."""

    h_sz: int
    out: int

    @nn.compact
    def __call__(self, q: jax.Array) -> jax.Array:
        return Linear(self.out, name="2")(gelu(Linear(self.h_sz, name="0")(q)))


class Composite(nn.Module):
    """The reference's CLayer: a LayerNorm over the concatenated codes."""

    eps: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return LayerNorm(self.eps, name="ln")(x)


class Fusion(nn.Module):
    """qv_fusion: Linear -> GELU -> Linear -> GELU -> LayerNorm."""

    out: int
    eps: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = gelu(Linear(self.out, name="ln1")(x))
        x = gelu(Linear(self.out, name="ln2")(x))
        return LayerNorm(self.eps, name="layer_norm")(x)


class SmarterHead(PuzzleHead):
    """Features of the frozen towers -> logits [B, K, C_max] for each sample's puzzle (SPEC 5).

    vision [B, Dv] and text [B, Dt] float32 (pooled tower features), puzzle_ids [B] int. Position 0
    holds the answer of ordinary puzzles (positions 1..K-1 are MASKED_LOGIT); sequence puzzles fill all
    K positions. Classes >= C_p of the sample's puzzle are MASKED_LOGIT. Puzzle ids outside the run get
    all-masked logits. The per-puzzle ends (steps 2 and 7) are :class:`PuzzleHead`'s, with GELU, decoder
    Linears ln1, ln2, ln3 and GRU sequence decoders; steps 3-6 are :meth:`_fuse`.
    """

    activation = "gelu"
    decoder_names = ("ln1", "ln2", "ln3")
    sequence_cell = "gru"

    def _fuse(
        self, im: jax.Array, text: jax.Array, train: bool, pdrop: jax.Array | float | None
    ) -> jax.Array:
        """im [B, R] and the pooled question features [B, Dt] -> z [B, R] (SPEC 5.3-5.6)."""
        cfg = self.cfg
        # 4-5. QF layer (or the q_MLP variant) and the composite LayerNorm.
        if cfg.use_qf:
            qf_out = QFLayer(cfg, name="qf")(im, text, train, pdrop)
            # The mean over L of q repeated L times is q itself.
            composite = jnp.concatenate([im, text, qf_out], axis=-1)
        else:
            q = QuestionMLP(cfg.h_sz, cfg.repr_size, name="q_MLP")(text)
            composite = jnp.concatenate([im, gelu(q)], axis=-1)
        composite = Composite(cfg.ln_eps, name="c")(composite)
        # 6. Fusion.
        return Fusion(cfg.repr_size, cfg.ln_eps, name="qv_fusion")(composite)


def build(cfg: ml_collections.ConfigDict) -> nn.Module:
    """Validate the config and make the head module (ValueError naming a bad field).

    ``cfg.head == "baseline"`` gives the SMART baseline (reasoner/baseline.py), which takes BERT token
    states [B, L, D] as its text input.
    """
    config_lib.validate(cfg)
    if cfg.get("head", "smarter") == "baseline":
        from smartvlm_jax.reasoner.baseline import BaselineHead  # baseline imports this package's layers

        return BaselineHead(ml_collections.FrozenConfigDict(cfg))
    return SmarterHead(ml_collections.FrozenConfigDict(cfg))
