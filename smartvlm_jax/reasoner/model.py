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
from smartvlm_jax.reasoner.puzzle_heads import StackedMLP, StackedRNN
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


class SmarterHead(nn.Module):
    """Features of the frozen towers -> logits [B, K, C_max] for each sample's puzzle.

    Position 0 holds the answer of ordinary puzzles (positions 1..K-1 are MASKED_LOGIT); sequence
    puzzles fill all K positions. Classes >= C_p of the sample's puzzle are MASKED_LOGIT. Puzzle ids
    outside the run get all-masked logits.
    """

    cfg: ml_collections.FrozenConfigDict

    @nn.compact
    def __call__(
        self, vision: jax.Array, text: jax.Array, puzzle_ids: jax.Array, train: bool = False
    ) -> jax.Array:
        cfg = self.cfg
        tab = config_lib.tables(cfg)
        r, k = cfg.repr_size, cfg.num_decode_steps
        pid = jnp.clip(puzzle_ids.astype(jnp.int32), 0, config_lib.NUM_ENCODER_SLOTS - 1)

        # 2. Image encoder(s): Linear -> GELU -> Linear, then GELU.
        single = cfg.use_single_image_head
        enc = StackedMLP(
            names=("0", "2"),
            features=(r, r),
            num_groups=1 if single else config_lib.NUM_ENCODER_SLOTS,
            impl=cfg.head_impl,
            unused_first_row=not single,
            name="im_encoder",
        )
        im = enc(vision, jnp.zeros_like(pid) if single else pid)
        # The reference applies the outer GELU only on the per-puzzle path; its single head omits it.
        if not (single and cfg.reference_quirks):
            im = gelu(im)

        # 4-5. QF layer (or the q_MLP variant) and the composite LayerNorm.
        if cfg.use_qf:
            qf_out = QFLayer(
                text_dim=cfg.text_dim,
                num_heads=cfg.num_heads,
                h_sz=cfg.h_sz,
                max_qlen=cfg.max_qlen,
                pdrop=cfg.pdrop,
                eps=cfg.ln_eps,
                with_distance_embedding=cfg.reference_quirks,
                name="qf",
            )(im, text, train)
            # The mean over L of q repeated L times is q itself.
            composite = jnp.concatenate([im, text, qf_out], axis=-1)
        else:
            q = QuestionMLP(cfg.h_sz, r, name="q_MLP")(text)
            composite = jnp.concatenate([im, gelu(q)], axis=-1)
        composite = Composite(cfg.ln_eps, name="c")(composite)

        # 6. Fusion.
        z = Fusion(r, cfg.ln_eps, name="qv_fusion")(composite)

        # 7. Decoders, padded to the run's largest C_p.
        c_max = tab.max_classes
        batch = z.shape[0]
        logits = jnp.full((batch, k, c_max), config_lib.MASKED_LOGIT, z.dtype)
        if tab.ordinary_ids:
            c_o = tab.max_ordinary_classes
            out = StackedMLP(
                names=("ln1", "ln2", "ln3"),
                features=(r, r, c_o),
                num_groups=len(tab.ordinary_ids),
                impl=cfg.head_impl,
                valid_out=tab.ordinary_classes,
                name="ans_decoder_mlp",
            )(z, jnp.asarray(tab.mlp_slot_of_pid)[pid])
            logits = logits.at[:, 0, :c_o].set(out)
        if tab.sequence_ids:
            c_s = tab.max_sequence_classes
            classes = jnp.asarray(tab.classes_of_pid)[pid]
            valid = jnp.arange(c_s)[None, :] < classes[:, None]
            seq = StackedRNN(
                cell="gru",
                classes=tab.sequence_classes,
                steps=k,
                coupled=cfg.reference_quirks,
                name="ans_decoder_gru",
            )(z, jnp.asarray(tab.gru_slot_of_pid)[pid], valid)  # [K, B, C_s]
            seq = jnp.pad(jnp.swapaxes(seq, 0, 1), ((0, 0), (0, 0), (0, c_max - c_s)))
            is_seq = jnp.asarray(tab.is_sequence_pid)[pid]
            logits = jnp.where(is_seq[:, None, None], seq, logits)
        class_ok = jnp.arange(c_max)[None, None, :] < jnp.asarray(tab.classes_of_pid)[pid][:, None, None]
        return jnp.where(class_ok, logits, config_lib.MASKED_LOGIT)


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
