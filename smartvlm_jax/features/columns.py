"""The frozen towers of a feature variant and the columns they give: what is computed, and what keys it.

A column is one tower's output over a split (``vision.<tower>`` per vision tower, ``text``): the towers
(:class:`FrozenTowers`) compute them, a :class:`Column` names and keys one in the feature store.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from smartvlm_jax import hashing, variants
from smartvlm_jax import towers as towers_lib

FORMAT_VERSION = 1  # bump when the code computes other values from the same towers and rows
TEXT_FIELD = "text"


def vision_field(name: str) -> str:
    """The field of a vision tower's pooled features in :meth:`FrozenTowers.columns` ("vision.dinov2")."""
    return f"vision.{name}"


def no_question_ids(questions: list[str]) -> np.ndarray:
    """The pipeline's tokenizer when no text column is extracted: int32 [B, 1] zeros (picklable)."""
    return np.zeros((len(questions), 1), np.int32)


@dataclasses.dataclass(frozen=True)
class FrozenTowers:
    """Vision towers of a feature variant (all, or those whose columns a store lacks) and its text tower
    (None when only vision columns are extracted), with pure feature functions."""

    vision: Mapping[str, object]  # name -> towers.load(..., part="vision"), in concatenation order
    text: object | None  # towers.load(..., part="text"); None: no text column to compute
    text_output: str = "mean"  # "mean": pooled [B, D]; "tokens": question token states [B, L, D]

    def __post_init__(self) -> None:
        if self.text_output not in variants.TEXT_OUTPUTS:
            raise ValueError(f"text_output={self.text_output!r} is not one of {variants.TEXT_OUTPUTS}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.vision)

    @property
    def vision_dim(self) -> int:
        return sum(t.hidden_size for t in self.vision.values())

    @property
    def text_dim(self) -> int:
        return self.text.hidden_size

    def preprocessors(self) -> dict[str, Callable]:
        """Picklable per-image resizers for the data pipeline, keyed like the batch's ``image/<name>``."""
        return {name: tower.resizer for name, tower in self.vision.items()}

    @property
    def tokenizer(self) -> Callable[[list[str]], np.ndarray]:
        """The text tower's tokenizer for the pipeline; without a text tower, :func:`no_question_ids`."""
        return no_question_ids if self.text is None else self.text.tokenizer

    def _towers(self) -> list:
        return [*self.vision.values(), *([] if self.text is None else [self.text])]

    @property
    def compiler_options(self) -> dict | None:
        """XLA options for jitting a function that runs these towers: theirs if they all agree, else None."""
        options = [t.compiler_options for t in self._towers()]
        return options[0] if all(o == options[0] for o in options) else None

    @functools.cached_property
    def jitted_features(self) -> Callable:
        """:meth:`features` jitted once for these towers (with their compiler options)."""
        return jax.jit(self.features, compiler_options=self.compiler_options)

    @functools.cached_property
    def jitted_columns(self) -> Callable:
        """:meth:`columns` jitted once for these towers (with their compiler options): every split's
        extraction shares one compilation per batch shape."""
        return jax.jit(self.columns, compiler_options=self.compiler_options)

    def params(self, pack: bool | None = None) -> dict:
        """The towers' parameters for :meth:`features`: their ``ready_params``, or with ``pack`` given
        ``prepared(pack)`` (False: XLA's dots everywhere, e.g. for XLA's FLOP count)."""
        get = (lambda t: t.ready_params) if pack is None else (lambda t: t.prepared(pack))
        text = {} if self.text is None else {"text": get(self.text)}
        return {"vision": {n: get(t) for n, t in self.vision.items()}, **text}

    def columns(self, params: Mapping, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Pure: each tower's output from a batch of uint8 images and question ids, float32.

        ``"vision.<name>"`` [B, D_name] per vision tower: the mean over all tokens of its
        last_hidden_state (SPEC 5.1; for ResNet-50 the global average pool). ``"text"`` (when there is a
        text tower), ``text_output="mean"``: the mean over all positions, padding included, [B, D] (SPEC
        4); ``"tokens"``: last_hidden_state [B, L, D] with the positions beyond the question (pad ids)
        zeroed, as the baseline's reference copies BERT's states of the unpadded question into a zero
        buffer (the same as ``reasoner.baseline.question_states``).
        """
        out = {}
        for name, tower in self.vision.items():
            pixels = tower.normalize(batch[f"image/{name}"])
            hidden = tower.apply(params["vision"][name], pixels)
            out[vision_field(name)] = jnp.mean(hidden.astype(jnp.float32), axis=1)
        if self.text is not None:
            ids = batch["question_ids"]
            text = self.text.apply(params["text"], ids).astype(jnp.float32)
            if self.text_output == "tokens":
                real = ids != int(self.text.config.get("pad_token_id") or 0)  # BERT's own attention mask
                out[TEXT_FIELD] = jnp.where(real[..., None], text, 0.0)
            else:
                out[TEXT_FIELD] = jnp.mean(text, axis=1)
        return out

    def features(self, params: Mapping, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        """Pure: (vision [B, sum D], text) as the head takes them: :meth:`columns`, the vision towers'
        concatenated in their order (the variant's)."""
        out = self.columns(params, batch)
        return jnp.concatenate([out[vision_field(n)] for n in self.vision], axis=-1), out[TEXT_FIELD]


def load_towers(
    towers_cfg: ml_collections.ConfigDict,
    variant: str,
    vision: Iterable[str] | None = None,
    text: bool = True,
) -> FrozenTowers:
    """Load the towers a feature variant needs from the local directories named in ``config.towers``:
    all of them, or the vision towers named in ``vision`` (in the variant's order) and the text tower if
    ``text``."""
    if towers_cfg.get("attention", "xla") != "xla":
        raise ValueError(
            f"--config.towers.attention={towers_cfg.attention!r}: the Pallas TPU kernel is compile-only so "
            "far (--compile_only=tpu:...); runs use 'xla'"
        )
    spec = variants.get(variant)
    wanted = set(spec.vision if vision is None else vision)
    load = functools.partial(
        towers_lib.load, dtype=towers_cfg.dtype, cpu_onednn=bool(towers_cfg.get("cpu_onednn", True))
    )
    vision_towers = {
        name: load(tower_dir(towers_cfg, name), part="vision") for name in spec.vision if name in wanted
    }
    text_tower = load_text_tower(tower_dir(towers_cfg, spec.text), load) if text else None
    return FrozenTowers(vision=vision_towers, text=text_tower, text_output=spec.text_output)


def load_text_tower(path: str, load: Callable = towers_lib.load) -> object:
    """The text part of the tower in ``path``, which must come with its tokenizer (the questions are fed
    through it); ValueError naming the directory otherwise."""
    text = load(path, part="text")
    if text.tokenizer is None:
        raise ValueError(
            f"{path} has a {text.kind} text tower but no tokenizer (SigLIP: spiece.model; BERT: "
            "tokenizer.json or vocab.txt): copy the tokenizer files of its release next to config.json"
        )
    return text


def tower_dir(towers_cfg: ml_collections.ConfigDict, name: str) -> str:
    """The directory ``config.towers.<name>`` names; FileNotFoundError naming the flag when it is not one."""
    path = towers_cfg.get(name, "")  # a config.json written before the baseline towers has no resnet/bert
    if not path or not os.path.isdir(path):
        raise FileNotFoundError(f"--config.towers.{name}={path!r} is not a directory")
    return path


@dataclasses.dataclass(frozen=True)
class Column:
    """One tower's output over a split, stored as ``<entry>/<name>.npy`` beside ``<name>.json`` (what its
    key covers). ``field`` is its name in :meth:`FrozenTowers.columns` ("vision.dinov2", "text")."""

    field: str
    tower: str  # the config.towers name
    inputs: Mapping[str, object]  # what determines it: tower digest, dtypes, preprocessing, format

    @property
    def key(self) -> str:
        return hashing.digest_json(dict(self.inputs))

    @property
    def name(self) -> str:
        """``vision-dinov2-<key16>``, ``text-siglip-mean-<key16>``."""
        if self.field == TEXT_FIELD:
            kind = f"text-{self.tower}-{self.inputs['text_output']}"
        else:
            kind = f"vision-{self.tower}"
        return f"{kind}-{self.key[:16]}"


def variant_columns(
    towers_cfg: ml_collections.ConfigDict,
    variant: str,
    *,
    storage_dtype: str,
    image_side: int,
    memo_dir: str | os.PathLike | None = None,
    digests: Mapping[str, str] | None = None,
) -> tuple[tuple[Column, ...], Column]:
    """(vision columns in the variant's tower order, text column) of a variant; reads no weights.

    A column's key covers the content digest of its tower's directory (``towers.content_digest``: every
    file, weights, config and tokenizer/processor files), the part and text output, the towers' dtype,
    the storage dtype, the image side the pipeline resizes to before the tower's own resize (vision) and
    ``FORMAT_VERSION``. ``digests`` (tower name -> its content digest) are those a caller already has
    (``sources.run_sources``'); the others are computed, ``memo_dir`` remembering large files' digests.
    FileNotFoundError naming the ``--config.towers.<name>`` field of a missing directory.
    """
    spec = variants.get(variant)
    digests = dict(digests or {})
    for name in spec.towers:
        if name not in digests:
            digests[name] = towers_lib.content_digest(tower_dir(towers_cfg, name), memo_dir)
    common = {"format": FORMAT_VERSION, "towers_dtype": towers_cfg.dtype, "storage_dtype": storage_dtype}

    def vision_inputs(name: str) -> dict:
        return {**common, "part": "vision", "tower": digests[name], "image_side": int(image_side)}

    vision = tuple(Column(vision_field(name), name, vision_inputs(name)) for name in spec.vision)
    text_inputs = {**common, "part": "text", "tower": digests[spec.text], "text_output": spec.text_output}
    text = Column(TEXT_FIELD, spec.text, text_inputs)
    return vision, text


def variant_dims(
    towers_cfg: ml_collections.ConfigDict, variant: str, configs: Mapping[str, Mapping] | None = None
) -> tuple[int, int]:
    """(vision_dim, text_dim) of a variant's towers, from their config files alone (no weights read), or
    from ``configs`` (tower name -> its top-level HF config: the tiny towers', known before they are
    written)."""
    spec = variants.get(variant)

    def width(name: str, part: str) -> int:
        if configs is not None:
            return towers_lib.config_hidden_size(configs[name], part, where=f"the tiny {name} tower")
        return towers_lib.hidden_size(tower_dir(towers_cfg, name), part)

    return sum(width(n, "vision") for n in spec.vision), width(spec.text, "text")
