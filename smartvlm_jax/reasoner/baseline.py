"""The SMART paper's baseline head (SPEC section 5, "Baseline"; the reference's ``SMART_Net`` with BERT).

image: per-puzzle encoder Linear(Dv, R) -> ReLU -> Linear(R, R), then ReLU (Dv = 2048, ResNet-50 pooled);
question: frozen BERT token states [B, L, 768], zero beyond the question's tokens (the reference copies the
states into a zero [L, 768] buffer) -> bidirectional GRU (hidden H) over all L positions -> mean over all
L positions (padding included, as the reference does) -> Linear(2H, R) (``q_MLP``) -> ReLU;
fusion ``qv_fusion``: Linear(2R, R) -> ReLU -> Linear(R, R) -> ReLU;
decoders ``ans_decoder``: Linear(R, R) -> ReLU -> Linear(R, R) -> ReLU -> Linear(R, C_p), and one-layer LSTMs
(hidden C_p) for sequence puzzles, run K steps with the state carried from step to step.

Per-puzzle layers are stacked and gathered per sample as in the SMARTER head (no loops over puzzles). With
``reference_quirks`` the LSTM decoding is batch-coupled exactly like the reference's unbatched call (see
:class:`smartvlm_jax.reasoner.puzzle_heads.StackedRNN`); otherwise each sample decodes from a zero state.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from smartvlm_jax.reasoner.layers import Linear, torch_uniform
from smartvlm_jax.reasoner.puzzle_heads import PuzzleHead, gru_update


def question_states(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """BERT ``last_hidden_state`` [B, L, D] with padded positions zeroed, the head's text input.

    The reference runs BERT on the unpadded question and copies its states into a zero [L, D] buffer; a
    padded, masked BERT gives the same states at the real positions, and this zeroes the rest.
    """
    return jnp.where(mask[..., None], hidden, 0.0).astype(jnp.float32)


class BiGRU(nn.Module):
    """PyTorch ``nn.GRU(D, H, bidirectional=True, batch_first=True)``: outputs [B, L, 2H] (fwd | bwd).

    Parameters keep PyTorch's stacking (gates r, z, n; [3H, D] and [3H, H]) so conversion is a rename.
    """

    hidden: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h, d = self.hidden, x.shape[-1]
        init = torch_uniform(h)  # PyTorch: U(+-1/sqrt(hidden))
        outs = []
        for suffix, reverse in (("", False), ("_reverse", True)):
            w_ih = self.param(f"weight_ih_l0{suffix}", init, (3 * h, d))
            w_hh = self.param(f"weight_hh_l0{suffix}", init, (3 * h, h))
            b_ih = self.param(f"bias_ih_l0{suffix}", init, (3 * h,))
            b_hh = self.param(f"bias_hh_l0{suffix}", init, (3 * h,))
            gi = jnp.einsum("bld,gd->lbg", x, w_ih) + b_ih  # input projections of all steps at once
            gi = gi.reshape(*gi.shape[:-1], 3, h)  # [L, B, 3, H]: gates r, z, n apart

            def step(hid, gi_t, w_hh=w_hh, b_hh=b_hh):
                gh = (hid @ w_hh.T + b_hh).reshape(-1, 3, h)
                new = gru_update(gi_t, gh, hid)
                return new, new

            _, seq = lax.scan(step, jnp.zeros((x.shape[0], h), x.dtype), gi, reverse=reverse)
            outs.append(jnp.swapaxes(seq, 0, 1))
        return jnp.concatenate(outs, axis=-1)


class BaselineHead(PuzzleHead):
    """ResNet-50 features [B, Dv] and zero-padded BERT states [B, L, Dt] (float32), puzzle_ids [B] int
    -> logits [B, K, C_max].

    Same output layout and masking as :class:`smartvlm_jax.reasoner.model.SmarterHead`: the per-puzzle
    ends are :class:`~smartvlm_jax.reasoner.puzzle_heads.PuzzleHead`'s, with ReLU, decoder Linears 0, 2, 4
    and LSTM sequence decoders, so the loss, predictions and metrics apply unchanged.
    """

    activation = "relu"
    decoder_names = ("0", "2", "4")
    sequence_cell = "lstm"

    def _fuse(
        self, im: jax.Array, text: jax.Array, train: bool, pdrop: jax.Array | float | None
    ) -> jax.Array:
        """im [B, R] and the token states [B, L, Dt] -> z [B, R]: BiGRU, mean over L, q_MLP, qv_fusion."""
        del train, pdrop  # the baseline has no dropout
        r = self.cfg.repr_size
        if text.ndim != 3:
            raise ValueError(f"the baseline head takes BERT token states [B, L, D]; got text {text.shape}")
        seq = BiGRU(self.cfg.h_sz, name="q_lstm")(text)  # [B, L, 2H]
        q = jax.nn.relu(Linear(r, name="q_MLP")(seq.mean(axis=1)))
        x = jax.nn.relu(Linear(r, name="qv_fusion_0")(jnp.concatenate([im, q], axis=-1)))
        return jax.nn.relu(Linear(r, name="qv_fusion_2")(x))
