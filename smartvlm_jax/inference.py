"""Inference, a peer of training: images + questions + options -> answers, from a trained or converted head.

    predictor = inference.Predictor.load(DIR, towers=[DINOV2_DIR, SIGLIP_DIR])  # SMART baseline: RESNET, BERT
    out = predictor.predict(images, questions, options, puzzle_ids)
    out.values, out.letters, out.top_values, out.top_probs

DIR is a training workdir (its ``best_model``, and its ``config.json`` naming the towers and the data
settings) or a reasoner model dir (e.g. converted from a reference checkpoint), which names no towers: then
``towers`` must give them. Both heads are served: the SMARTER head and its ablations, and the SMART
baseline (ResNet-50 + BERT); which towers a head needs comes from its ``variant``
(:mod:`smartvlm_jax.variants`). Inputs take exactly the path of training and evaluation: the reference's
first resize (RGB, shorter side 224, ``smart101.resize_shorter_side``), each vision tower's resizer, the
text tower's tokenizer, ``features.FrozenTowers.features`` and the head; option values follow
``smart101.answer_value`` and the chosen letter ``metrics.select_options`` (the rule O_acc scores).

Each example is answered on its own: with ``reference_quirks`` the reference's GRU decoders couple the
samples of a batch (an accident of its unbatched call), so the predictor runs those heads one example at a
time, which is what the reference computes for a batch of one. Answers never depend on batching.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from PIL import Image

from smartvlm_jax import features, images, metrics, puzzles, sources, variants
from smartvlm_jax import towers as towers_lib
from smartvlm_jax.data import smart101
from smartvlm_jax.reasoner import checkpoint
from smartvlm_jax.reasoner import config as config_lib
from smartvlm_jax.reasoner.losses import predictions as head_predictions
from smartvlm_jax.towers import hf, registry
from smartvlm_jax.workdir import Workdir

ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray


@dataclasses.dataclass(frozen=True)
class Predictions:
    """Answers of N examples. K = decode positions; k = top-k width.

    values: int [N, K], argmax per position (ordinary puzzles: position 0; the rest is 0).
    option_index: int [N], the chosen option 0..4, -1 when no option matches (exact-match puzzles) or
      no options were given.
    letters: the chosen option letter per example, or None.
    top_values, top_probs: int / float [N, K, k], the k most probable values of each position and their
      softmax probabilities over the puzzle's C_p classes.
    num_positions: int [N], positions that carry the answer (1, or K for sequence puzzles).
    """

    puzzle_ids: np.ndarray
    values: np.ndarray
    option_index: np.ndarray
    letters: list[str | None]
    top_values: np.ndarray
    top_probs: np.ndarray
    num_positions: np.ndarray

    def __len__(self) -> int:
        return len(self.letters)

    def answer(self, i: int) -> int | list[int]:
        """Example i's predicted value: an int, or the K values of a sequence puzzle (pads included)."""
        n = int(self.num_positions[i])
        return int(self.values[i, 0]) if n == 1 else [int(v) for v in self.values[i, :n]]

    def record(self, i: int) -> dict[str, Any]:
        """Example i as a JSON-ready dict: puzzle id, answer, option letter, top values per position."""
        n = int(self.num_positions[i])
        return {
            "puzzle_id": int(self.puzzle_ids[i]),
            "answer": self.answer(i),
            "option": self.letters[i],
            "top": [
                [
                    {"value": int(v), "prob": float(p)}
                    for v, p in zip(self.top_values[i, pos], self.top_probs[i, pos], strict=True)
                ]
                for pos in range(n)
            ],
        }


class Predictor:
    """A head, its frozen towers and the preprocessing of training, behind one ``predict`` call."""

    def __init__(
        self,
        model: Any,
        params: Any,
        cfg: ml_collections.ConfigDict,
        frozen: features.FrozenTowers,
        *,
        image_side: int = smart101.IMAGE_SIDE,
        batch_size: int = 64,
        top_k: int = 3,
        source: str = "",
    ):
        self.model, self.cfg, self.towers = model, cfg, frozen
        self.image_side, self.batch_size, self.source = int(image_side), int(batch_size), source
        if self.batch_size < 1 or top_k < 1:
            raise ValueError(f"batch_size ({batch_size}) and top_k ({top_k}) must be >= 1")
        check_towers(frozen, cfg, source)
        self.top_k = min(int(top_k), config_lib.tables(cfg).max_classes)
        self._params = {"head": params, "towers": frozen.params()}
        # Quirks couple the GRU decoding of a batch's samples: run such a head one example at a time.
        self._per_example = bool(cfg.reference_quirks) and any(
            puzzles.is_sequence(int(p)) for p in cfg.puzzle_ids
        )
        self._forward = jax.jit(self._forward_impl)
        self._features = frozen.jitted_features

    # ------------------------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        towers: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike] | None = None,
        *,
        dtype: str | None = None,
        batch_size: int = 64,
        top_k: int = 3,
        allow_other_towers: bool = False,
    ) -> Predictor:
        """A predictor for a training workdir or a reasoner model dir.

        ``towers``: tower directories (HF or converted; the kind is read from each), or a mapping
        {"dinov2": dir, "siglip": dir}; default: those the workdir's config.json records. ``dtype``:
        "float32" | "bfloat16" for the towers (default: the run's, else float32).

        A model dir written by training records its towers' digests (``sources.json``): towers whose
        contents differ raise ``sources.SourceChangedError`` naming both directories (after the kinds and
        widths are checked against the head's, which name what differs); ``allow_other_towers`` makes that
        one warning.
        """
        path = pathlib.Path(path).absolute()
        model, variables, cfg = checkpoint.load(path)
        run = Workdir(path).run_config()
        towers_cfg = run.get("towers", {}) if run else {}
        dtype = dtype or towers_cfg.get("dtype", "float32")
        if towers is None:
            needed = variants.get(cfg.variant).towers
            if not towers_cfg:
                raise ValueError(
                    f"{path} is a model dir without a training run's config.json: pass the towers "
                    f"(--towers DIR ...) its variant={cfg.variant!r} need: {', '.join(needed)}"
                )
            towers = {name: towers_cfg.get(name, "") for name in needed}
        frozen = resolve_towers(
            towers, cfg.variant, dtype, str(path), cpu_onednn=bool(towers_cfg.get("cpu_onednn", True))
        )
        image_side = (run or {}).get("data", {}).get("image_side", smart101.IMAGE_SIDE)
        predictor = cls(
            model,
            variables["params"],
            cfg,
            frozen,
            image_side=image_side,
            batch_size=batch_size,
            top_k=top_k,
            source=str(path),
        )
        # After the kinds and widths (the more telling errors): the same shapes, other contents.
        given = towers if isinstance(towers, Mapping) else {tower_kind(d)[0]: d for d in towers}
        model_dir = Workdir(path).best_model if run else path
        sources.check_model_towers(model_dir, {k: d for k, d in given.items() if d}, allow=allow_other_towers)
        return predictor

    # ------------------------------------------------------------------------------------ inputs

    @property
    def puzzle_ids(self) -> list[int]:
        """The puzzle ids this head has decoders for, sorted."""
        return [int(p) for p in self.cfg.puzzle_ids]

    def num_classes(self, puzzle_id: int) -> int:
        self._check_puzzles([puzzle_id])
        return int(self.cfg.num_classes[self.puzzle_ids.index(int(puzzle_id))])

    def option_values(self, puzzle_id: int, options: Sequence[str], where: str = "") -> np.ndarray:
        """int [5, K]: the value of each option as the heads encode answers (SPEC section 2).

        As the dataset reader does, an empty first option means the options are the letters A..E, and an
        empty later option is worth its letter. Puzzle 63 pads with its C_p - 1 from the checkpoint.
        """
        options = [str(o) for o in options]
        if len(options) != len(smart101.OPTION_LETTERS):
            raise ValueError(f"{where}expected {len(smart101.OPTION_LETTERS)} options, got {len(options)}")
        if not options[0].strip():
            options = list(smart101.OPTION_LETTERS)
        pad_63 = self.num_classes(63) - 1 if int(puzzle_id) == 63 else -1
        out = []
        for letter, text in zip(smart101.OPTION_LETTERS, options, strict=True):
            try:
                out.append(smart101.answer_value(int(puzzle_id), text.strip() or letter, pad_63=pad_63))
            except ValueError as e:
                raise ValueError(
                    f"{where}option {letter} {text!r} of puzzle {puzzle_id} has no answer value: {e}"
                ) from None
        return np.asarray(out, np.int64)

    def prepare(self, images: Sequence[ImageInput], questions: Sequence[str]) -> dict[str, np.ndarray]:
        """Host-side inputs, as the data pipeline makes them: ``image/<tower>`` uint8 and ``question_ids``."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        resized = [self._reference_image(im, i) for i, im in enumerate(images)]
        batch = {
            f"image/{name}": np.stack([np.asarray(fn(im), np.uint8) for im in resized])
            for name, fn in self.towers.preprocessors().items()
        }
        for i, q in enumerate(questions):
            if not isinstance(q, str):
                raise TypeError(f"question {i} is a {type(q).__name__}, not a str")
        # One question at a time, as the pipeline tokenizes (padding and truncation to 64 tokens).
        batch["question_ids"] = np.stack(
            [np.asarray(self.towers.text.tokenizer([q]), np.int32)[0] for q in questions]
        )
        return batch

    def _reference_image(self, image: ImageInput, index: int) -> Image.Image:
        """Decode any PNG/JPEG/array and apply the reference's first resize (RGB, shorter side 224)."""
        try:
            if isinstance(image, (Image.Image, np.ndarray)):  # any mode, shape or bit depth images.py takes
                return smart101.resize_shorter_side(image, self.image_side)
            return smart101.resize_shorter_side(images.open_image(image), self.image_side)
        except (OSError, ValueError, TypeError) as e:
            name = image if isinstance(image, (str, os.PathLike)) else type(image).__name__
            raise smart101.BadImageError(f"image {index} ({name}) cannot be read: {e}") from None

    def _check_puzzles(self, puzzle_ids: Sequence[int]) -> None:
        missing = sorted({int(p) for p in puzzle_ids} - set(self.puzzle_ids))
        if missing:
            raise ValueError(
                f"the checkpoint {self.source or ''} has no decoder for puzzle ids {missing}; "
                f"it has {self.puzzle_ids}"
            )

    # ------------------------------------------------------------------------------------ compute

    def _forward_impl(self, params, batch):
        vision, text = self.towers.features(params["towers"], batch)
        pids = batch["puzzle_ids"]

        def head(v, t, p):
            return self.model.apply({"params": params["head"]}, v, t, p, train=False)

        if self._per_example:
            logits = jax.vmap(lambda v, t, p: head(v[None], t[None], p[None])[0])(vision, text, pids)
        else:
            logits = head(vision, text, pids)
        preds = head_predictions(logits, pids, self.cfg)
        top_p, top_v = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), self.top_k)
        return preds, top_v, top_p

    def _padded_batches(self, batch: Mapping[str, np.ndarray]):
        """Chunks of at most batch_size, each padded to a power of two (few compiled shapes)."""
        n = len(batch["puzzle_ids"])
        for start in range(0, n, self.batch_size):
            size = min(self.batch_size, n - start)
            padded = min(self.batch_size, 1 << math.ceil(math.log2(size)))
            take = np.concatenate([np.arange(start, start + size), np.full(padded - size, start)])
            yield size, {k: v[take] for k, v in batch.items()}

    def features(
        self, images: Sequence[ImageInput], questions: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The frozen towers' (vision [N, Dv], text [N, Dt]) features, as training caches them."""
        batch = self.prepare(images, questions)
        batch["puzzle_ids"] = np.zeros(len(questions), np.int32)
        outs = []
        for size, chunk in self._padded_batches(batch):
            vision, text = self._features(self._params["towers"], chunk)
            outs.append((np.asarray(vision)[:size], np.asarray(text)[:size]))
        return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])

    def predict(
        self,
        images: Sequence[ImageInput],
        questions: Sequence[str],
        options: Sequence[Sequence[str]] | None = None,
        puzzle_ids: Sequence[int] | int = (),
    ) -> Predictions:
        """Answer N puzzles: images (paths, bytes, PIL images or uint8 arrays), question texts, five
        option texts each (or None: values only), and the puzzle id of each (or one for all)."""
        n = len(questions)
        one = isinstance(puzzle_ids, (int, np.integer))
        pids = np.full(n, puzzle_ids, np.int32) if one else np.asarray(puzzle_ids)
        if pids.shape != (n,):
            raise ValueError(f"{pids.size} puzzle ids for {n} questions")
        self._check_puzzles(pids.tolist())
        if options is not None and len(options) != n:
            raise ValueError(f"{len(options)} option lists for {n} questions")
        # One example's options may be None on their own (values only): its row of option values is a
        # placeholder that `given` keeps out of the choice.
        given = np.array([options is not None and options[i] is not None for i in range(n)], bool)
        option_values = None
        if given.any():
            rows = {
                i: self.option_values(int(pids[i]), options[i], f"example {i}: ")
                for i in np.flatnonzero(given)
            }
            placeholder = np.zeros_like(next(iter(rows.values())))
            option_values = np.stack([rows.get(i, placeholder) for i in range(n)])
        batch = self.prepare(images, questions)
        batch["puzzle_ids"] = pids.astype(np.int32)
        preds, top_v, top_p = [], [], []
        for size, chunk in self._padded_batches(batch):
            out = jax.device_get(self._forward(self._params, chunk))
            preds.append(out[0][:size])
            top_v.append(out[1][:size])
            top_p.append(out[2][:size])
        values = np.concatenate(preds).astype(np.int64)
        chosen = np.full(n, -1, np.int64)
        if option_values is not None:
            chosen = np.where(given, metrics.select_options(values, pids, option_values), -1)
        return Predictions(
            puzzle_ids=pids.astype(np.int64),
            values=values,
            option_index=chosen,
            letters=[smart101.OPTION_LETTERS[c] if c >= 0 else None for c in chosen],
            top_values=np.concatenate(top_v).astype(np.int64),
            top_probs=np.concatenate(top_p).astype(np.float32),
            num_positions=np.where(
                np.isin(pids, list(puzzles.SEQUENCE_PUZZLES)), self.cfg.num_decode_steps, 1
            ).astype(np.int64),
        )


# ---------------------------------------------------------------------------------------- towers


def tower_kind(path: str | os.PathLike) -> tuple[str, tuple[str, ...]]:
    """(kind, parts) of a tower directory, HF or converted, read from its metadata (no weights)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"tower {path} is not a directory")
    if registry.is_converted(path):
        meta = registry.read_meta(path)
        return str(meta["kind"]), tuple(sorted(meta["parts"]))
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(
            f"tower {path}: neither a converted tower ({registry.META_FILE}) "
            "nor an HF directory (config.json)"
        )
    entry = registry.model_type_entry(str(hf.read_config(path).get("model_type")))
    return entry.kind, tuple(sorted(entry.parts))


def resolve_towers(
    towers: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike],
    variant: str,
    dtype: str = "float32",
    checkpoint_name: str = "the checkpoint",
    cpu_onednn: bool = True,
) -> features.FrozenTowers:
    """Load the towers a feature variant needs from directories whose kind is read from each.

    Vision parts come from the directories of the variant's vision towers, the text part from its text
    tower's directory (SigLIP for SMARTER, BERT for the SMART baseline). A missing kind, two directories
    of one kind, a directory of an unused kind or a missing part is an error naming the directories and
    what the checkpoint needs.
    """
    spec = variants.get(variant)
    needed = spec.towers
    if isinstance(towers, Mapping):
        dirs = [os.fspath(d) for d in towers.values() if d]
    else:
        dirs = [os.fspath(d) for d in towers]
    by_kind: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    for d in dirs:
        kind, parts = tower_kind(d)
        by_kind.setdefault(kind, []).append((d, parts))
    given = ", ".join(f"{d} ({k})" for k, items in by_kind.items() for d, _ in items) or "none"
    extra = sorted(set(by_kind) - set(needed))
    if extra:
        raise ValueError(
            f"{checkpoint_name} has variant={variant!r}, which needs towers {list(needed)}; "
            f"towers of kind {extra} do not belong to it (given: {given})"
        )
    missing = [k for k in needed if k not in by_kind]
    if missing:
        raise ValueError(
            f"{checkpoint_name} has variant={variant!r}, which needs towers {list(needed)}; "
            f"missing {missing} (given: {given})"
        )
    load = functools.partial(towers_lib.load, dtype=dtype, cpu_onednn=cpu_onednn)
    vision, text = {}, None
    for kind in needed:
        if len(by_kind[kind]) > 1:
            raise ValueError(f"several {kind} towers given: {[d for d, _ in by_kind[kind]]}; pass one")
        d, parts = by_kind[kind][0]
        for part in ("vision", "text"):
            if (kind in spec.vision if part == "vision" else kind == spec.text) and part not in parts:
                raise ValueError(f"tower {d} ({kind}) has no {part} part; it has {list(parts)}")
        if kind in spec.vision:
            vision[kind] = load(d, part="vision")
        if kind == spec.text:
            text = features.load_text_tower(d, load)  # the question encoder, with its tokenizer
    vision = {k: vision[k] for k in spec.vision}  # concatenation order
    return features.FrozenTowers(vision=vision, text=text, text_output=spec.text_output)


def check_towers(frozen: features.FrozenTowers, cfg: ml_collections.ConfigDict, source: str = "") -> None:
    """The towers' kinds and feature widths must be those the head was trained on; errors name both."""
    name = source or "the checkpoint"
    spec = variants.get(cfg.variant)
    if tuple(frozen.vision) != spec.vision or any(t.kind != k for k, t in frozen.vision.items()):
        raise ValueError(
            f"{name} has variant={cfg.variant!r} (vision towers {list(spec.vision)}), but the towers are "
            f"{[t.kind for t in frozen.vision.values()]}"
        )
    if frozen.text.kind != spec.text or frozen.text.part != "text" or frozen.text_output != spec.text_output:
        raise ValueError(
            f"{name} needs the {spec.text} text tower's {spec.text_output} output, got the "
            f"{frozen.text.kind} {frozen.text.part} part's {frozen.text_output}"
        )
    widths = " + ".join(f"{k} {t.hidden_size}" for k, t in frozen.vision.items())
    if frozen.vision_dim != config_lib.vision_dim(cfg):
        raise ValueError(
            f"vision towers give {frozen.vision_dim}-d features ({widths}), but {name} expects "
            f"vision_dim {config_lib.vision_dim(cfg)} (variant={cfg.variant!r})"
        )
    if frozen.text_dim != int(cfg.text_dim):
        raise ValueError(
            f"the {spec.text} text tower gives {frozen.text_dim}-d features, but {name} expects "
            f"text_dim {cfg.text_dim}"
        )
