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
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from smartvlm_jax import puzzles
from smartvlm_jax.convert.baseline_table import params_from_state, state_from_params
from smartvlm_jax.reasoner import config as config_lib

Array = np.ndarray


class TorchBaselineHead(nn.Module):
    """The baseline head of ``cfg`` in PyTorch; forward gives {pid: logits or [K x logits]}."""

    def __init__(self, cfg: ml_collections.ConfigDict, vocab_size: int = 64):
        super().__init__()
        config_lib.validate(cfg)
        self.cfg = cfg
        r, h, vdim = cfg.repr_size, cfg.h_sz, config_lib.vision_dim(cfg)
        self.sorted_ids = sorted(int(p) for p in cfg.puzzle_ids)
        self.classes = dict(zip(self.sorted_ids, (int(c) for c in cfg.num_classes), strict=True))
        if cfg.use_single_image_head:
            self.im_encoder = nn.Sequential(nn.Linear(vdim, r), nn.ReLU(), nn.Linear(r, r))
        else:
            encoders = [nn.Sequential(nn.Linear(r, 1))]  # index 0: the reference's unused dummy
            encoders += [
                nn.Sequential(nn.Linear(vdim, r), nn.ReLU(), nn.Linear(r, r)) for _ in puzzles.ALL_PUZZLE_IDS
            ]
            self.im_encoder = nn.ModuleList(encoders)
        self.q_lstm = nn.GRU(cfg.text_dim, h, num_layers=1, batch_first=True, bidirectional=True)
        self.q_MLP = nn.Linear(2 * h, r)
        self.o_encoder = nn.Sequential(nn.Embedding(vocab_size, r, max_norm=1), nn.Linear(r, r), nn.ReLU())
        self.qv_fusion = nn.Sequential(nn.Linear(2 * r, r), nn.ReLU(), nn.Linear(r, r), nn.ReLU())
        decoders: list[nn.Module] = [nn.Sequential(nn.Linear(r, 1))]
        for p in self.sorted_ids:
            c = self.classes[p]
            if puzzles.is_sequence(p):
                decoders.append(nn.LSTM(r, c, num_layers=1, batch_first=True))
            else:
                decoders.append(
                    nn.Sequential(nn.Linear(r, r), nn.ReLU(), nn.Linear(r, r), nn.ReLU(), nn.Linear(r, c))
                )
        self.ans_decoder = nn.ModuleList(decoders)

    def encode_image(self, x: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        if self.cfg.use_single_image_head:
            y = self.im_encoder(x)
            return y if self.cfg.reference_quirks else F.relu(y)
        y = torch.zeros(len(x), self.cfg.repr_size, dtype=x.dtype)
        for p in self.sorted_ids:
            idx = pids == p
            if idx.any():
                y[idx] = F.relu(self.im_encoder[p](x[idx]))
        return y

    def encode_text(self, q_enc: torch.Tensor) -> torch.Tensor:
        x, _ = self.q_lstm(q_enc)  # [B, L, 2H] over all L positions, padding included
        return F.relu(self.q_MLP(x.mean(1)))

    def _sequence(self, decoder: nn.LSTM, z: torch.Tensor) -> list[torch.Tensor]:
        outs, hx = [], None
        for _ in range(self.cfg.num_decode_steps):
            if self.cfg.reference_quirks:
                out, hx = decoder(z, hx)  # (B_p, R) is one unbatched sequence of length B_p
            else:
                out, hx = decoder(z.unsqueeze(1), hx)  # B_p sequences of length 1
                out = out.squeeze(1)
            outs.append(out)
        return outs

    def forward(self, vision: torch.Tensor, text: torch.Tensor, pids: torch.Tensor) -> dict:
        z = self.qv_fusion(torch.cat([self.encode_image(vision, pids), self.encode_text(text)], dim=1))
        out = {}
        for p in torch.unique(pids).tolist():
            idx = pids == p
            dec = self.ans_decoder[1 + self.sorted_ids.index(p)]
            out[p] = self._sequence(dec, z[idx]) if puzzles.is_sequence(p) else dec(z[idx])
        return out


def load_jax_params(module: TorchBaselineHead, params: Mapping) -> None:
    """Copies the JAX head's params into the port (the dummies and o_encoder keep their values)."""
    state = module.state_dict()
    with torch.no_grad():
        for k, v in state_from_params(params, module.cfg).items():
            if k not in state:
                raise KeyError(f"port has no parameter {k}")
            state[k].copy_(torch.from_numpy(np.array(v)))


def jax_params(module: TorchBaselineHead) -> dict:
    """The JAX head's params from the port's weights."""
    sd = {k: v.detach().cpu().float().numpy() for k, v in module.state_dict().items()}
    return params_from_state(sd, module.cfg)
