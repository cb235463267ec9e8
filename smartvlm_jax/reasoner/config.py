"""Configuration of the reasoner head: defaults, validation and derived per-puzzle tables.

The ConfigDict is the single description of a head: `build` makes the module from it, `save` writes it
next to the parameters, and `load` rebuilds the same module from the saved copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from smartvlm_jax import puzzles, variants

# How the per-puzzle layers run (puzzle_heads.resolve_impl; docs/heads.md): "auto" picks "dense" or "gather"
# per stack from its rows and the batch size; "ragged" sorts the batch and uses jax.lax.ragged_dot.
HEAD_IMPLS: tuple[str, ...] = ("auto", "gather", "dense", "ragged")
# Number of per-puzzle image encoders: one per puzzle id 1..101 plus the unused index 0, so that the
# encoder of puzzle p is row p of the stacked parameters, as in the reference's ModuleList.
NUM_ENCODER_SLOTS = len(puzzles.ALL_PUZZLE_IDS) + 1
# Value written into the logits of classes a puzzle does not have (and of unused positions).
MASKED_LOGIT = -1e9


def default_config() -> ml_collections.ConfigDict:
    """The paper's final head (fused DINOv2+SigLIP features, SigLIP text, QF layer), quirks off.

    `puzzle_ids` and `num_classes` come from the data (smart101's class counts) and must be filled in
    before `build`; everything else has the paper's value.
    """
    c = ml_collections.ConfigDict()
    c.head = "smarter"  # "smarter" (this paper's head) or "baseline" (SMART's ResNet-50 + BERT head)
    c.puzzle_ids = []  # sorted puzzle ids of the run (1..101); decoders are indexed by rank among them
    c.num_classes = []  # C_p of each puzzle in puzzle_ids, same order
    c.variant = "fused"  # the feature variant (smartvlm_jax/variants.py): towers, text output, widths
    c.vision_dim = 0  # width of the vision features; 0: that of `variant` (base towers); set for other sizes
    c.text_dim = 768  # width of the pooled question features from the text tower
    c.use_qf = True  # QF layer (self- and cross-attention + intermediate); False: q_MLP variant
    c.use_single_image_head = False  # one image encoder shared by all puzzles instead of 101
    c.reference_quirks = False  # reproduce the reference's accidents (batch-coupled GRU, dead weights)
    c.repr_size = 128  # R: width of image codes, fusion output and decoder inputs
    c.h_sz = 256  # H: hidden width of the QF intermediate and q_MLP
    c.num_heads = 2  # attention heads of the QF layer (768 / heads per head)
    c.pdrop = 0.2  # dropout on attention probabilities and after the QF intermediate
    c.ln_eps = 1e-6  # epsilon of every LayerNorm
    c.max_qlen = 110  # L: length of the (repeated) question sequence seen by the QF layer
    c.num_decode_steps = puzzles.NUM_DECODE_STEPS  # K: answer positions decoded for sequence puzzles
    c.head_impl = "auto"  # per-puzzle layers: "auto", "gather" (per-sample weights), "dense", "ragged"
    return c


def baseline_config() -> ml_collections.ConfigDict:
    """The SMART baseline head (SPEC 5 "Baseline"): ResNet-50 features (2048) and BERT-base token states
    (768) of the "resnet" variant, R = 128, H = 256, L = 110 tokens, no QF layer, no dropout."""
    cfg = default_config()
    variant = variants.get("resnet")
    cfg.head = variant.head
    cfg.variant = variant.name
    cfg.vision_dim = variant.vision_dim
    cfg.text_dim = variant.text_dim
    cfg.use_qf = False
    cfg.pdrop = 0.0
    return cfg


@dataclasses.dataclass(frozen=True)
class PuzzleTables:
    """Static per-puzzle lookup tables derived from a config (numpy, indexed by puzzle id 0..101).

    The model turns them into constants inside jit, so choosing a puzzle's decoder is a gather, not a
    Python branch.
    """

    ordinary_ids: tuple[int, ...]  # run puzzles decoded by an MLP, sorted
    sequence_ids: tuple[int, ...]  # run puzzles decoded by a GRU, sorted
    ordinary_classes: tuple[int, ...]
    sequence_classes: tuple[int, ...]
    classes_of_pid: np.ndarray  # [102] C_p, 0 for ids outside the run
    mlp_slot_of_pid: np.ndarray  # [102] row in the MLP decoder stack; len(ordinary_ids) if none
    gru_slot_of_pid: np.ndarray  # [102] row in the GRU decoder stack; len(sequence_ids) if none
    is_sequence_pid: np.ndarray  # [102] bool

    @property
    def max_classes(self) -> int:
        return int(self.classes_of_pid.max())

    @property
    def max_ordinary_classes(self) -> int:
        return max(self.ordinary_classes, default=1)

    @property
    def max_sequence_classes(self) -> int:
        return max(self.sequence_classes, default=1)


def upgrade(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A head config as written by an older version (a model dir's config.json, a run config's "model")
    with its renamed fields (``variants.RENAMED_FIELDS``) under their current names; a current one comes
    back equal."""
    out = dict(saved)
    for old, new in variants.RENAMED_FIELDS.items():
        if old in out and new not in out:
            out[new] = out.pop(old)
    return out


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming the field when the config is unknown or inconsistent."""
    ids = [int(i) for i in cfg.puzzle_ids]
    if not ids:
        raise ValueError("puzzle_ids: empty; set the run's puzzle ids (and num_classes) from the data")
    if ids != sorted(set(ids)):
        raise ValueError(f"puzzle_ids: must be sorted and unique, got {ids}")
    if ids[0] < 1 or ids[-1] > len(puzzles.ALL_PUZZLE_IDS):
        raise ValueError(f"puzzle_ids: ids must lie in 1..{len(puzzles.ALL_PUZZLE_IDS)}, got {ids}")
    if len(cfg.num_classes) != len(ids):
        raise ValueError(f"num_classes: {len(cfg.num_classes)} entries for {len(ids)} puzzle_ids")
    if any(int(c) < 1 for c in cfg.num_classes):
        raise ValueError(f"num_classes: every C_p must be >= 1, got {list(cfg.num_classes)}")
    if cfg.variant not in variants.VARIANTS:
        raise ValueError(f"variant: unknown {cfg.variant!r}; expected one of {sorted(variants.VARIANTS)}")
    if cfg.get("head", "smarter") not in variants.HEADS:
        raise ValueError(f"head: unknown {cfg.head!r}; expected one of {list(variants.HEADS)}")
    if cfg.head_impl not in HEAD_IMPLS:
        raise ValueError(f"head_impl: unknown {cfg.head_impl!r}; expected one of {list(HEAD_IMPLS)}")
    if cfg.text_dim % cfg.num_heads:
        raise ValueError(f"num_heads: {cfg.num_heads} does not divide text_dim {cfg.text_dim}")
    for name in ("text_dim", "repr_size", "h_sz", "num_heads", "max_qlen", "num_decode_steps"):
        if int(cfg[name]) < 1:
            raise ValueError(f"{name}: must be >= 1, got {cfg[name]}")
    if not 0.0 <= float(cfg.pdrop) < 1.0:
        raise ValueError(f"pdrop: must lie in [0, 1), got {cfg.pdrop}")
    if float(cfg.ln_eps) <= 0:
        raise ValueError(f"ln_eps: must be > 0, got {cfg.ln_eps}")


def vision_dim(cfg: ml_collections.ConfigDict) -> int:
    """Width of the vision features the head expects."""
    return int(cfg.get("vision_dim", 0)) or variants.get(cfg.variant).vision_dim


def tables(cfg: ml_collections.ConfigDict) -> PuzzleTables:
    """Per-puzzle tables of a validated config."""
    ids = [int(i) for i in cfg.puzzle_ids]
    classes = [int(c) for c in cfg.num_classes]
    ordinary = [(p, c) for p, c in zip(ids, classes, strict=True) if not puzzles.is_sequence(p)]
    sequence = [(p, c) for p, c in zip(ids, classes, strict=True) if puzzles.is_sequence(p)]
    classes_of_pid = np.zeros(NUM_ENCODER_SLOTS, np.int32)
    mlp_slot = np.full(NUM_ENCODER_SLOTS, len(ordinary), np.int32)
    gru_slot = np.full(NUM_ENCODER_SLOTS, len(sequence), np.int32)
    is_seq = np.zeros(NUM_ENCODER_SLOTS, bool)
    for p, c in zip(ids, classes, strict=True):
        classes_of_pid[p] = c
    for slot, (p, _) in enumerate(ordinary):
        mlp_slot[p] = slot
    for slot, (p, _) in enumerate(sequence):
        gru_slot[p] = slot
        is_seq[p] = True
    return PuzzleTables(
        ordinary_ids=tuple(p for p, _ in ordinary),
        sequence_ids=tuple(p for p, _ in sequence),
        ordinary_classes=tuple(c for _, c in ordinary),
        sequence_classes=tuple(c for _, c in sequence),
        classes_of_pid=classes_of_pid,
        mlp_slot_of_pid=mlp_slot,
        gru_slot_of_pid=gru_slot,
        is_sequence_pid=is_seq,
    )
