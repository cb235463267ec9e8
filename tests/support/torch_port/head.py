"""PyTorch port of the reasoner head, laid out and computed the way the reference does it.

Module names match the reference's state_dict (im_encoder.<pid>.0, qf.mha.query, qf.crossattention,
qf.intermediate, c.ln, qv_fusion.ln1, ans_decoder.<k>.ln3 or .weight_ih_l0, q_MLP, o_encoder), and
the forward pass is the reference's: Python loops over the puzzles of the batch, the literal QF
attention over L repeated question vectors (relative-distance scores computed and then discarded),
and per-puzzle GRUs. With `reference_quirks` the GRU is called on the unbatched (B_p, R) matrix as
the reference does, so PyTorch itself produces the batch-coupled decoding. :class:`PuzzleHeadPort`
holds the per-puzzle ends this head shares with the baseline's port (``torch_port/baseline.py``), and
:func:`copy_state` / :func:`state_arrays` the weight copying both use. Used only by tests and
benchmarks; the runtime package never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import ml_collections
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from smartvlm_jax import puzzles
from smartvlm_jax.convert import reference
from smartvlm_jax.reasoner import config as config_lib

Array = np.ndarray


class Attention(nn.Module):
    """Multi-head attention with a (dead) relative-distance embedding, no output projection."""

    def __init__(self, hidden: int, kv_dim: int, heads: int, max_qlen: int, pdrop: float):
        super().__init__()
        self.heads, self.head = heads, hidden // heads
        self.max_qlen = max_qlen
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_dim, hidden)
        self.value = nn.Linear(kv_dim, hidden)
        self.dropout = nn.Dropout(pdrop)
        self.distance_embedding = nn.Embedding(2 * max_qlen - 1, self.head)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], self.heads, self.head).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None) -> torch.Tensor:
        kv = x if kv is None else kv
        q, k, v = self._split(self.query(x)), self._split(self.key(kv)), self._split(self.value(kv))
        scores = q @ k.transpose(-1, -2)
        n = x.shape[1]
        pos = torch.arange(n, device=x.device)
        rel = self.distance_embedding(pos[:, None] - pos[None, :] + self.max_qlen - 1)
        scores = scores + torch.einsum("bhld,lrd->bhlr", q, rel)  # the reference's quirk: overwritten
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head)
        probs = self.dropout(scores.softmax(-1))
        ctx = (probs @ v).permute(0, 2, 1, 3).contiguous()
        return ctx.view(*ctx.shape[:-2], self.heads * self.head)


class Intermediate(nn.Module):
    def __init__(self, dim: int, h_sz: int, pdrop: float, eps: float):
        super().__init__()
        self.dense = nn.Linear(dim, h_sz)
        self.dense_final = nn.Linear(h_sz, dim)
        self.dropout = nn.Dropout(pdrop)
        self.layer_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(x + self.dropout(self.dense_final(F.gelu(self.dense(x)))))


class QF(nn.Module):
    def __init__(self, cfg: ml_collections.ConfigDict):
        super().__init__()
        d = cfg.text_dim
        self.mha = Attention(d, d, cfg.num_heads, cfg.max_qlen, cfg.pdrop)
        self.crossattention = Attention(d, cfg.repr_size, cfg.num_heads, cfg.max_qlen, cfg.pdrop)
        self.intermediate = Intermediate(d, cfg.h_sz, cfg.pdrop, cfg.ln_eps)

    def forward(self, im: torch.Tensor, q_seq: torch.Tensor) -> torch.Tensor:
        q_attn = self.mha(q_seq)
        vision = im.unsqueeze(1).expand(-1, q_seq.shape[1], -1)
        return self.intermediate(self.crossattention(q_attn, vision).mean(1))


class CLayer(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.ln = nn.LayerNorm(dim, eps=eps)


class Fusion(nn.Module):
    def __init__(self, in_dim: int, out: int, eps: float):
        super().__init__()
        self.ln1, self.ln2 = nn.Linear(in_dim, out), nn.Linear(out, out)
        self.layer_norm = nn.LayerNorm(out, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(F.gelu(self.ln2(F.gelu(self.ln1(x)))))


class PuzzleHeadPort(nn.Module):
    """The reference's per-puzzle ends, the same in its two heads (``SMART_Net`` and the SMARTER head).

    Per-puzzle image encoders ``im_encoder.<pid>`` (index 0: the reference's unused Linear(R, 1) dummy;
    one shared ``im_encoder`` under ``use_single_image_head``), the unused ``o_encoder``, and per-puzzle
    answer decoders ``ans_decoder.<k>`` (k = 1 + rank of the puzzle id; index 0 a dummy): an MLP for
    ordinary puzzles, a one-layer RNN with hidden C_p for sequence puzzles. The forward loops over the
    batch's puzzles as the reference does and returns {pid: logits [B_p, C_p] or K such}.

    A head sets ``activation`` (the nn module class between and after the encoder's Linears) and
    ``sequence_rnn`` (nn.GRU or nn.LSTM), builds its middle between ``super().__init__`` and
    :meth:`_answer_decoders` (the order the reference makes its modules in, so a seeded port draws the
    same initial weights), and defines :meth:`fuse` and :meth:`_mlp_decoder`.
    """

    activation: type[nn.Module] = nn.GELU
    sequence_rnn: type[nn.RNNBase] = nn.GRU

    def __init__(self, cfg: ml_collections.ConfigDict):
        super().__init__()
        config_lib.validate(cfg)
        self.cfg = cfg
        r, vdim = cfg.repr_size, config_lib.vision_dim(cfg)
        self.sorted_ids = sorted(int(p) for p in cfg.puzzle_ids)
        self.classes = dict(zip(self.sorted_ids, (int(c) for c in cfg.num_classes), strict=True))
        if cfg.use_single_image_head:
            self.im_encoder = nn.Sequential(nn.Linear(vdim, r), self.activation(), nn.Linear(r, r))
        else:
            encoders = [nn.Sequential(nn.Linear(r, 1))]  # index 0: the reference's unused dummy
            encoders += [
                nn.Sequential(nn.Linear(vdim, r), self.activation(), nn.Linear(r, r))
                for _ in puzzles.ALL_PUZZLE_IDS
            ]
            self.im_encoder = nn.ModuleList(encoders)

    def _o_encoder(self, vocab_size: int) -> nn.Module:
        """The reference's option encoder: built and saved, never called."""
        r = self.cfg.repr_size
        return nn.Sequential(nn.Embedding(vocab_size, r, max_norm=1), nn.Linear(r, r), self.activation())

    def _mlp_decoder(self, classes: int) -> nn.Module:
        raise NotImplementedError

    def _answer_decoders(self) -> nn.ModuleList:
        r = self.cfg.repr_size
        decoders: list[nn.Module] = [nn.Sequential(nn.Linear(r, 1))]  # index 0: the reference's dummy
        for p in self.sorted_ids:
            c = self.classes[p]
            if puzzles.is_sequence(p):
                decoders.append(self.sequence_rnn(r, c, num_layers=1, batch_first=True))
            else:
                decoders.append(self._mlp_decoder(c))
        return nn.ModuleList(decoders)

    def encode_image(self, x: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        act = self.activation()
        if self.cfg.use_single_image_head:
            y = self.im_encoder(x)
            return y if self.cfg.reference_quirks else act(y)
        y = torch.zeros(len(x), self.cfg.repr_size, dtype=x.dtype, device=x.device)
        for p in self.sorted_ids:
            idx = pids == p
            if idx.any():
                y[idx] = act(self.im_encoder[p](x[idx]))
        return y

    def fuse(self, im: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """im [B, R] and the head's text input -> z [B, R]: the head's own middle."""
        raise NotImplementedError

    def _sequence(self, decoder: nn.RNNBase, z: torch.Tensor) -> list[torch.Tensor]:
        outs, hx = [], None
        for _ in range(self.cfg.num_decode_steps):
            if self.cfg.reference_quirks:
                out, hx = decoder(z, hx)  # (B_p, R) is one unbatched sequence of length B_p
            else:
                out, hx = decoder(z.unsqueeze(1), hx)  # a batch of B_p sequences of length 1
                out = out.squeeze(1)
            outs.append(out)
        return outs

    def forward(self, vision: torch.Tensor, text: torch.Tensor, pids: torch.Tensor) -> dict:
        z = self.fuse(self.encode_image(vision, pids), text)
        out = {}
        for p in torch.unique(pids).tolist():
            idx = pids == p
            dec = self.ans_decoder[1 + self.sorted_ids.index(p)]
            out[p] = self._sequence(dec, z[idx]) if puzzles.is_sequence(p) else dec(z[idx])
        return out


class MLPDecoder(nn.Module):
    def __init__(self, r: int, classes: int):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = nn.Linear(r, r), nn.Linear(r, r), nn.Linear(r, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln3(F.gelu(self.ln2(F.gelu(self.ln1(x)))))


class TorchSmarterHead(PuzzleHeadPort):
    """The head of `cfg` in PyTorch; forward returns the reference's {pid: logits or [K x logits]}."""

    activation = nn.GELU
    sequence_rnn = nn.GRU

    def __init__(self, cfg: ml_collections.ConfigDict, vocab_size: int = 64):
        super().__init__(cfg)
        r = cfg.repr_size
        self.q_MLP = nn.Sequential(nn.Linear(cfg.text_dim, cfg.h_sz), nn.GELU(), nn.Linear(cfg.h_sz, r))
        self.o_encoder = self._o_encoder(vocab_size)
        composite = r + 2 * cfg.text_dim if cfg.use_qf else 2 * r
        if cfg.use_qf:
            self.qf = QF(cfg)
        self.c = CLayer(composite, cfg.ln_eps)
        self.qv_fusion = Fusion(composite, r, cfg.ln_eps)
        self.ans_decoder = self._answer_decoders()

    def _mlp_decoder(self, classes: int) -> nn.Module:
        return MLPDecoder(self.cfg.repr_size, classes)

    def fuse(self, im: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        if self.cfg.use_qf:
            q_seq = text.unsqueeze(1).expand(-1, self.cfg.max_qlen, -1)  # the reference's repeated question
            composite = torch.cat([im, q_seq.mean(1), self.qf(im, q_seq)], dim=1)
        else:
            composite = torch.cat([im, F.gelu(self.q_MLP(text))], dim=1)
        return self.qv_fusion(self.c.ln(composite))


def padded_logits(outputs: Mapping, pids: torch.Tensor, cfg: ml_collections.ConfigDict) -> torch.Tensor:
    """The reference's per-puzzle outputs laid out like the JAX head's logits [B, K, C_max]."""
    c_max = max(int(c) for c in cfg.num_classes)
    first = next(iter(outputs.values()))
    dtype = (first[0] if isinstance(first, list) else first).dtype
    logits = torch.full(
        (len(pids), cfg.num_decode_steps, c_max), config_lib.MASKED_LOGIT, dtype=dtype, device=pids.device
    )
    for p, out in outputs.items():
        idx = torch.nonzero(pids == p).squeeze(1)
        steps = out if isinstance(out, list) else [out]
        for k, o in enumerate(steps):
            logits[idx, k, : o.shape[-1]] = o
    return logits


def reference_loss(outputs: Mapping, labels: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
    """The reference criterion: per-puzzle mean CE (sequence puzzles: mean over K), mean over puzzles."""
    total = 0.0
    for p, out in outputs.items():
        idx = pids == p
        if isinstance(out, list):
            total = total + sum(F.cross_entropy(o, labels[idx, k]) for k, o in enumerate(out)) / len(out)
        else:
            total = total + F.cross_entropy(out, labels[idx, 0])
    return total / len(outputs)


def copy_state(module: nn.Module, arrays: Mapping[str, Array]) -> None:
    """Copy reference-named arrays into the port's weights; KeyError naming a key the port lacks."""
    state = module.state_dict()
    unknown = sorted(set(arrays) - set(state))
    if unknown:
        raise KeyError(f"port has no parameter {unknown[0]}")
    with torch.no_grad():
        for k, v in arrays.items():
            state[k].copy_(torch.from_numpy(np.array(v)))


def state_arrays(module: nn.Module) -> dict[str, Array]:
    """The port's weights as float32 numpy arrays under the reference's names."""
    return {k: v.detach().cpu().float().numpy() for k, v in module.state_dict().items()}


def load_jax_params(module: TorchSmarterHead, params: Mapping) -> None:
    """Copy the JAX head's params into the port (weights the JAX head lacks keep their values)."""
    copy_state(module, reference.reference_from_params(params, module.cfg))


def jax_params(module: TorchSmarterHead) -> dict:
    """The JAX head's params tree from the port's weights (reference names, strict)."""
    return reference.params_from_reference(state_arrays(module), module.cfg)


def reference_state_dict(module: TorchSmarterHead) -> dict[str, torch.Tensor]:
    """The port's state_dict, which has the reference's key names (for building test checkpoints)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
