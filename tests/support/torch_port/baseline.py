"""PyTorch port of the SMART baseline head, laid out and computed the way the reference (``SMART_Net``) does.

Module names are the reference's state_dict keys (``im_encoder.<pid>.0``, ``q_lstm.weight_ih_l0_reverse``,
``q_MLP``, ``o_encoder``, ``qv_fusion.0``, ``ans_decoder.<k>.4`` or ``ans_decoder.<k>.weight_ih_l0``), and
the forward is the reference's: loops over the batch's puzzles, ``nn.GRU`` over the zero-padded L token
states, the mean over all L outputs, and per-puzzle LSTMs called on the unbatched (B_p, R) matrix under
``reference_quirks``. :func:`params_from_state` / :func:`state_from_params` (the rename table between
these keys and the JAX head's params, numpy) live in ``convert/baseline_table.py``. Tests and benchmarks only.
"""

from __future__ import annotations

from collections.abc import Mapping

import ml_collections
import torch
import torch.nn.functional as F
from torch import nn

from smartvlm_jax.convert.baseline_table import params_from_state, state_from_params
from tests.support.torch_port.head import PuzzleHeadPort, copy_state, state_arrays


class TorchBaselineHead(PuzzleHeadPort):
    """The baseline head of ``cfg`` in PyTorch; forward gives {pid: logits or [K x logits]}.

    The per-puzzle ends are :class:`~tests.support.torch_port.head.PuzzleHeadPort`'s, with ReLU, decoders
    ``nn.Sequential`` (keys 0, 2, 4) and LSTMs.
    """

    activation = nn.ReLU
    sequence_rnn = nn.LSTM

    def __init__(self, cfg: ml_collections.ConfigDict, vocab_size: int = 64):
        super().__init__(cfg)
        r, h = cfg.repr_size, cfg.h_sz
        self.q_lstm = nn.GRU(cfg.text_dim, h, num_layers=1, batch_first=True, bidirectional=True)
        self.q_MLP = nn.Linear(2 * h, r)
        self.o_encoder = self._o_encoder(vocab_size)
        self.qv_fusion = nn.Sequential(nn.Linear(2 * r, r), nn.ReLU(), nn.Linear(r, r), nn.ReLU())
        self.ans_decoder = self._answer_decoders()

    def _mlp_decoder(self, classes: int) -> nn.Module:
        r = self.cfg.repr_size
        return nn.Sequential(nn.Linear(r, r), nn.ReLU(), nn.Linear(r, r), nn.ReLU(), nn.Linear(r, classes))

    def encode_text(self, q_enc: torch.Tensor) -> torch.Tensor:
        x, _ = self.q_lstm(q_enc)  # [B, L, 2H] over all L positions, padding included
        return F.relu(self.q_MLP(x.mean(1)))

    def fuse(self, im: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.qv_fusion(torch.cat([im, self.encode_text(text)], dim=1))


def load_jax_params(module: TorchBaselineHead, params: Mapping) -> None:
    """Copies the JAX head's params into the port (the dummies and o_encoder keep their values)."""
    copy_state(module, state_from_params(params, module.cfg))


def jax_params(module: TorchBaselineHead) -> dict:
    """The JAX head's params from the port's weights."""
    return params_from_state(state_arrays(module), module.cfg)
