"""The tower registry: which model types exist, how their configs split into parts, and the Tower object.

Adding a tower family (BERT, ResNet-50 for the SMART baseline) means adding a :class:`Family` (its weight
table and forward) and a :class:`ModelType` entry (which HF ``model_type`` it reads, where each part's
config and checkpoint prefix are); loading, conversion, saving and random init then work unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from PIL import Image

from smartvlm_jax.towers import backends, bert, dinov2, resnet, siglip
from smartvlm_jax.towers.params import Specs, compute_dtype
from smartvlm_jax.towers.preprocess import Normalizer, Resizer
from smartvlm_jax.towers.tokenizer import TextTokenizer

log = logging.getLogger(__name__)

Forward = Callable[[Any, jax.Array, dict[str, Any], Any], jax.Array]
Pool = Callable[[Any, jax.Array, dict[str, Any], Any], jax.Array]


@dataclasses.dataclass(frozen=True)
class Family:
    """One kind of tower part: its HF config defaults, weight table, forward and pooled output."""

    kind: str
    part: str
    defaults: Mapping[str, Any]
    specs: Callable[[dict[str, Any]], Specs]
    forward: Forward
    pool: Pool
    # (params, config, pack) -> the equivalent params ``forward`` runs fastest on (computed once, outside
    # jit); ``pack``: with the block linears packed for the oneDNN kernels (ViT towers:
    # backends.prepare_layers)
    prepare: Callable[[Any, dict[str, Any], bool], Any] = lambda params, config, pack: params

    def full_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The part's config with HF defaults filled in for keys a hand-written config leaves out."""
        return {**self.defaults, **config}


@dataclasses.dataclass(frozen=True)
class PartSource:
    """Where a part lives inside an HF model type: its sub-config key and checkpoint key prefixes."""

    config_key: str | None  # None: the top-level config is the part's config
    prefixes: tuple[str, ...]  # tried in order; "" means no prefix


@dataclasses.dataclass(frozen=True)
class ModelType:
    """An HF ``model_type`` this package reads: its tower kind, parts, and keys to ignore entirely."""

    kind: str
    parts: Mapping[str, PartSource]
    ignored: tuple[str, ...] = ()  # checkpoint keys that belong to no part (e.g. SigLIP's logit_scale)


FAMILIES: dict[tuple[str, str], Family] = {
    ("dinov2", "vision"): Family(
        "dinov2",
        "vision",
        dinov2.DEFAULTS,
        dinov2.param_specs,
        dinov2.forward,
        lambda params, hidden, config, dtype: hidden[:, 0],  # Dinov2Model.pooler_output: normed CLS
        dinov2.prepare,
    ),
    ("siglip", "vision"): Family(
        "siglip",
        "vision",
        siglip.VISION_DEFAULTS,
        siglip.vision_param_specs,
        siglip.vision_forward,
        siglip.vision_pooled,
        siglip.prepare,
    ),
    ("siglip", "text"): Family(
        "siglip",
        "text",
        siglip.TEXT_DEFAULTS,
        siglip.text_param_specs,
        siglip.text_forward,
        lambda params, hidden, config, dtype: siglip.text_pooled(params, hidden),
        siglip.prepare,
    ),
    # SMART baseline towers: ResNet-50 (tokens = the last feature map, mean = global pool) and BERT.
    ("resnet", "vision"): Family(
        "resnet", "vision", resnet.DEFAULTS, resnet.param_specs, resnet.forward, resnet.pooled
    ),
    ("bert", "text"): Family(
        "bert", "text", bert.DEFAULTS, bert.text_param_specs, bert.text_forward, bert.text_pooled
    ),
}

MODEL_TYPES: dict[str, ModelType] = {
    "dinov2": ModelType("dinov2", {"vision": PartSource(None, ("", "dinov2."))}),
    "siglip": ModelType(
        "siglip",
        {
            "vision": PartSource("vision_config", ("vision_model.",)),
            "text": PartSource("text_config", ("text_model.",)),
        },
        ignored=("logit_scale", "logit_bias"),
    ),
    "siglip_vision_model": ModelType("siglip", {"vision": PartSource(None, ("", "vision_model."))}),
    "siglip_text_model": ModelType("siglip", {"text": PartSource(None, ("", "text_model."))}),
    # ResNetModel ("") or ResNetForImageClassification ("resnet."); torchvision's fc is its classifier.
    "resnet": ModelType(
        "resnet",
        {"vision": PartSource(None, ("", "resnet."))},
        ignored=("classifier.1.weight", "classifier.1.bias", *resnet.TORCHVISION_IGNORED),
    ),
    # BertModel ("") or BertForPreTraining / BertForMaskedLM ("bert."), whose heads are not the tower.
    "bert": ModelType("bert", {"text": PartSource(None, ("", "bert."))}, ignored=bert.PRETRAINING_HEAD_KEYS),
}

# Tower kinds built from vit.py's pre-LN blocks, which run on towers.backends (fused q/k/v, oneDNN kernels,
# CPU compiler options).
VIT_KINDS = ("dinov2", "siglip")

FORMAT = "smartvlm_jax.towers"
META_FILE = "towers.json"


def model_type_entry(model_type: str) -> ModelType:
    """The registry entry of an HF ``model_type``; ``ValueError`` naming it when unsupported."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unsupported model type {model_type!r}; supported: {sorted(MODEL_TYPES)}")
    return MODEL_TYPES[model_type]


def part_config(top_config: Mapping[str, Any], part: str) -> tuple[Family, dict[str, Any]]:
    """(family, full part config) of ``part`` of a top-level HF config; errors name the type and part."""
    model_type = top_config.get("model_type")
    entry = model_type_entry(str(model_type))
    if part not in entry.parts:
        raise ValueError(f"model type {model_type!r} has no {part!r} part; it has {sorted(entry.parts)}")
    source = entry.parts[part]
    cfg = top_config if source.config_key is None else top_config.get(source.config_key) or {}
    family = FAMILIES[(entry.kind, part)]
    return family, family.full_config(cfg)


@dataclasses.dataclass(eq=False)
class Tower:
    """A loaded frozen tower part: config, parameters, preprocessing and a pure, jit-able forward.

    ``apply(params, x)`` is pure (params are an argument) so it can be jitted, sharded and mapped by the
    caller; ``encode(x)`` is the jitted ``apply`` with this tower's own params. ``params`` keep the HF
    names (what is saved and converted); ``ready_params`` are the same weights laid out for speed (ViT
    towers: q/k/v fused), computed once on first use; ``apply`` takes either and gives the same result.
    """

    kind: str
    part: str
    model_type: str
    config: dict[str, Any]
    params: Any
    dtype: str = "float32"
    source_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    processor_config: dict[str, Any] | None = None
    resizer: Resizer | None = None
    normalize: Normalizer | None = None
    tokenizer: TextTokenizer | None = None
    cpu_onednn: bool = True  # see packs_linears and compiler_options

    def __post_init__(self) -> None:
        self._family = FAMILIES[(self.kind, self.part)]
        self._compute_dtype = compute_dtype(self.dtype)

    @functools.cached_property
    def _encode(self) -> Callable:
        # Made on first use: the compiler options depend on packs_linears, which may build the kernels.
        return jax.jit(self.apply, compiler_options=self.compiler_options)

    @property
    def hidden_size(self) -> int:
        """D, the width of ``last_hidden_state`` (ResNet: channels of the last stage)."""
        return int(self.config.get("hidden_size") or self.config["hidden_sizes"][-1])

    @property
    def image_size(self) -> int:
        """S, the side of the square images ``preprocess`` produces (vision parts only)."""
        if self.resizer is None:
            raise AttributeError(f"the {self.part} part of {self.kind} has no image size")
        return self.resizer.size

    @property
    def _is_vit(self) -> bool:
        return self.kind in VIT_KINDS

    @property
    def compiler_options(self) -> dict[str, Any] | None:
        """XLA options for jitting this tower's forward (``jax.jit(..., compiler_options=)``), or None.

        ViT towers in float32 on CPU whose blocks run through XLA's dots compile those dots through XLA's
        oneDNN (:func:`backends.compiler_options`) unless loaded with ``cpu_onednn=False``. Where the blocks
        run through the oneDNN kernels (``packs_linears``) the few dots left keep XLA's defaults: a program
        with XLA's oneDNN fusions cannot be written to JAX's persistent compilation cache ("ToProto is not
        implemented for thunk kind: onednn-fusion"), so every run would compile the towers again.
        """
        if not self._is_vit or self.packs_linears:
            return None
        return backends.compiler_options(self._compute_dtype, self.cpu_onednn)

    @functools.cached_property
    def packs_linears(self) -> bool:
        """Whether ``ready_params`` hold the block linears packed for the oneDNN kernels: ViT towers loaded
        with ``cpu_onednn`` where the backend packs them (:func:`backends.packs_linears`: a one-device CPU
        backend where the kernels build)."""
        return self._is_vit and backends.packs_linears(self.cpu_onednn)

    @functools.cached_property
    def ready_params(self) -> Any:
        """``params`` prepared for the forward (ViT towers: q/k/v fused, linears packed where
        ``packs_linears``); what ``encode`` runs."""
        if self.packs_linears:
            log.info("%s %s tower: encoder blocks run through the oneDNN CPU kernels", self.kind, self.part)
        return self.prepared(self.packs_linears)

    def prepared(self, pack: bool) -> Any:
        """``params`` laid out for the forward, with (``pack``, CPU only) or without the block linears
        packed for the oneDNN kernels; ``ready_params`` is the one this process runs."""
        return self._family.prepare(self.params, self.config, pack)

    def apply(self, params: Any, inputs: jax.Array) -> jax.Array:
        """Pure forward: pixels [B, S, S, 3] (vision) or token ids [B, T] (text) -> last_hidden_state."""
        return self._family.forward(params, inputs, self.config, self._compute_dtype)

    def encode(self, inputs: jax.Array) -> jax.Array:
        """``apply`` with this tower's params, jitted."""
        return self._encode(self.ready_params, inputs)

    def pooled(self, params: Any, hidden: jax.Array) -> jax.Array:
        """HF ``pooler_output`` from ``last_hidden_state`` (DINOv2: CLS; SigLIP: attention pool / head)."""
        return self._family.pool(params, hidden, self.config, self._compute_dtype)

    def preprocess(self, images: Sequence[Image.Image | np.ndarray]) -> jax.Array:
        """PIL images or uint8 arrays of any size and mode -> float32 [B, S, S, 3]."""
        if self.resizer is None or self.normalize is None:
            raise AttributeError(f"the {self.part} part of {self.kind} takes token ids, not images")
        return self.normalize(np.stack([self.resizer(x) for x in images]))

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> int32 [B, max_length] ids (text parts only)."""
        if self.tokenizer is None:
            raise AttributeError(
                f"the {self.part} part of {self.kind} has no tokenizer "
                "(no spiece.model / tokenizer.json / vocab.txt)"
            )
        return self.tokenizer(texts)


def is_converted(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory written by :func:`smartvlm_jax.towers.save`."""
    return os.path.isfile(os.path.join(path, META_FILE))


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a converted directory, checked for format."""
    with open(os.path.join(path, META_FILE)) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: {META_FILE} is not a {FORMAT} file")
    return meta
