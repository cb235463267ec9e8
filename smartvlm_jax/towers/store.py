"""Loading and saving towers: HF directories (read by `towers.hf`) and the converted format.

Converted format (loads without torch; transformers only builds a text part's tokenizer)::

    OUT/towers.json        {"format", "version", "kind", "model_type", "config": <HF config>, "parts": {...}}
    OUT/<part>/            Orbax checkpoint of the part's float32 parameters (nested dict, HF-mirroring names)
    OUT/tokenizer/         the text part's tokenizer as transformers saves it (``save_pretrained``): SigLIP
                           ``spiece.model``, BERT ``tokenizer.json``, each with ``tokenizer_config.json``

Version 1 directories (a bare ``spiece.model`` or ``vocab.txt`` plus settings in ``towers.json``) still load.

Every write goes to a temporary sibling directory that is renamed into place at the end, so a failure
never leaves a partial ``OUT``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from smartvlm_jax import fileio, hashing, workdir
from smartvlm_jax.towers import hf, preprocess
from smartvlm_jax.towers.params import check_tree, flatten, random_init, to_device, unflatten
from smartvlm_jax.towers.registry import (
    FORMAT,
    META_FILE,
    MODEL_TYPES,
    Tower,
    is_converted,
    model_type_entry,
    part_config,
    read_meta,
)
from smartvlm_jax.towers.tokenizer import TextTokenizer

VERSION = 2  # 2: the tokenizer is transformers' save_pretrained directory (1: one file plus settings)
TOKENIZER_DIR = "tokenizer"


def weights_digest(flat: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of flat weights as float32 (names, shapes and bytes, in sorted name order)."""
    digest = hashlib.sha256()
    for name in sorted(flat):
        value = np.ascontiguousarray(flat[name], np.float32)
        digest.update(f"{name}:{list(value.shape)};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def content_digest(path: str | os.PathLike, memo_dir: str | os.PathLike | None = None) -> str:
    """SHA-256 of what a tower directory holds: every file (config.json, weights, tokenizer and processor
    files; ``hashing.directory_digest``), so a changed file gives a new digest.

    A converted tower whose ``towers.json`` records each part's ``weights_sha256`` (written since that
    field exists) is digested without its Orbax folders, whose files hold write timestamps: two writes
    of the same weights (tiny towers of the same seed in two workdirs) then have one digest. ``memo_dir``
    remembers the digests of large files (``hashing.file_digest``). FileNotFoundError when ``path`` is
    not a directory.
    """
    skip_parts: set[str] = set()
    if is_converted(path):
        parts = read_meta(path).get("parts", {})
        if parts and all("weights_sha256" in info for info in parts.values()):
            skip_parts = set(parts)
    return hashing.directory_digest(path, memo_dir, skip=lambda name: name.parts[0] in skip_parts)


def hidden_size(path: str | os.PathLike, part: str) -> int:
    """D, the width of a tower part's ``last_hidden_state`` (ResNet: its last stage's channels), read from
    its ``config.json`` (or converted ``towers.json``) without loading weights; ValueError naming the
    directory for a part its model lacks."""
    path = os.fspath(path)
    top_config = read_meta(path)["config"] if is_converted(path) else hf.read_config(path)
    return config_hidden_size(top_config, part, where=path)


def config_hidden_size(top_config: Mapping[str, Any], part: str, where: str = "the tower config") -> int:
    """:func:`hidden_size` of a tower's top-level HF config (a dict, as ``config.json`` holds it);
    ValueError naming ``where`` for a part its model lacks."""
    try:
        _, cfg = part_config(top_config, part)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{where}: no {part} part ({e})") from None
    return int(cfg.get("hidden_size") or cfg["hidden_sizes"][-1])


def build_tower(
    top_config: Mapping[str, Any],
    part: str,
    flat: Mapping[str, np.ndarray],
    dtype: str,
    processor: Mapping[str, Any] | None = None,
    tokenizer: TextTokenizer | None = None,
) -> Tower:
    """A :class:`Tower` from a top-level HF config and flat float32 weights, strictly checked: the weights
    against the config, and a text part's tokenizer against its embedding (ids past ``vocab_size`` would
    read outside it: NaN features in JAX, an IndexError in PyTorch). ValueError names what disagrees."""
    family, cfg = part_config(top_config, part)
    model_type = str(top_config["model_type"])
    check_tree(family.specs(cfg), flat, f"{model_type} {part} parameters")
    check_vocab(tokenizer, cfg)
    resizer = normalizer = None
    if part == "vision":
        processor = dict(processor or preprocess.default_processor(family.kind, cfg))
        resizer, normalizer = preprocess.from_processor_config(processor)
    return Tower(
        kind=family.kind,
        part=part,
        model_type=model_type,
        config=cfg,
        params=to_device(flat, dtype),
        dtype=dtype,
        source_config=copy.deepcopy(dict(top_config)),
        processor_config=processor,
        resizer=resizer,
        normalize=normalizer,
        tokenizer=tokenizer,
    )


def check_vocab(tokenizer: TextTokenizer | None, cfg: Mapping[str, Any]) -> None:
    """ValueError when ``tokenizer`` emits ids the text config's embedding (``vocab_size`` rows) lacks."""
    if tokenizer is not None and tokenizer.vocab_size > cfg["vocab_size"]:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} ids but the text config's vocab_size is "
            f"{cfg['vocab_size']}"
        )


def load(
    path: str | os.PathLike, part: str = "vision", dtype: str = "float32", cpu_onednn: bool = True
) -> Tower:
    """Loads one part ("vision" | "text") of a tower from an HF directory or a converted one.

    ``dtype``: "float32", or "bfloat16" (matmul weights and inputs in bf16, float32 accumulation and
    residual stream; outputs are float32 either way). ``cpu_onednn``: on a one-device CPU backend run
    the ViT blocks through the oneDNN kernels (``Tower.packs_linears``) and compile float32 forwards with
    their remaining dots in oneDNN (``Tower.compiler_options``); False keeps XLA's defaults throughout.
    """
    path = os.fspath(path)
    if is_converted(path):
        tower = _load_converted(path, part, dtype)
    elif os.path.isfile(os.path.join(path, "config.json")):
        top_config, flat, processor, tokenizer = hf.read_part(path, part)
        try:
            tower = build_tower(top_config, part, flat, dtype, processor, tokenizer)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    else:
        raise FileNotFoundError(
            f"{path}: neither a converted tower ({META_FILE}) nor an HF directory (config.json)"
        )
    return dataclasses.replace(tower, cpu_onednn=cpu_onednn)


def _load_converted(path: str, part: str, dtype: str) -> Tower:
    workdir.check_path(os.path.abspath(path), "tower")  # Orbax reads it back by a glob over the path
    meta = read_meta(path)
    if part not in meta["parts"]:
        raise ValueError(f"{path} has no {part!r} part; it has {sorted(meta['parts'])}")
    info = meta["parts"][part]
    with _checkpointer() as ckpt:
        tree = ckpt.restore(os.path.abspath(os.path.join(path, part)))
    flat = {k: np.asarray(v, np.float32) for k, v in flatten(tree).items()}
    tokenizer = None
    if info.get("tokenizer"):
        settings = dict(info["tokenizer"])
        kind = meta["kind"]
        if "dir" in settings:
            folder = os.path.join(path, settings["dir"])
            tokenizer = TextTokenizer.from_dir(folder, kind, settings["max_length"])
            if tokenizer is None:
                raise FileNotFoundError(f"{path}: {META_FILE} names a tokenizer in {folder}, which has none")
        else:  # version 1
            tokenizer = TextTokenizer.from_file(os.path.join(path, settings.pop("file")), kind, **settings)
    return build_tower(meta["config"], part, flat, dtype, info.get("processor"), tokenizer)


def _checkpointer() -> ocp.StandardCheckpointer:
    """An Orbax checkpointer for this process alone.

    Converted towers are host numpy trees written or read by one process (the converter, or process 0 of a
    training job building tiny towers) while the other processes of a multi-process job do other work, so
    Orbax's default cross-process barriers would wait for peers that never join.
    """
    me = jax.process_index()
    return ocp.StandardCheckpointer(
        multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    )


def write_converted(
    out_dir: str | os.PathLike,
    top_config: Mapping[str, Any],
    parts: Mapping[str, Mapping[str, np.ndarray]],
    processors: Mapping[str, Mapping[str, Any] | None] | None = None,
    tokenizer: TextTokenizer | None = None,
) -> str:
    """Writes flat float32 weights of ``parts`` in the converted format (atomically); returns the path."""
    workdir.check_path(os.path.abspath(out_dir), "tower")  # before any work: Orbax globs over the path
    model_type = str(top_config["model_type"])
    entry = model_type_entry(model_type)
    meta_parts: dict[str, Any] = {}
    for part, flat in parts.items():
        family, cfg = part_config(top_config, part)
        check_tree(family.specs(cfg), flat, f"{model_type} {part} parameters")
        info: dict[str, Any] = {}
        if part == "vision":
            proc = (processors or {}).get(part) or preprocess.default_processor(family.kind, cfg)
            preprocess.from_processor_config(proc)  # fail now, not at load time, on unsupported settings
            info["processor"] = dict(proc)
        if part == "text" and tokenizer is not None:
            check_vocab(tokenizer, cfg)
            info["tokenizer"] = {"dir": TOKENIZER_DIR, "max_length": tokenizer.max_length}
        # Orbax's files hold timestamps, so two writes of the same weights differ on disk: the weights'
        # own digest is what keys a converted tower's features (content_digest).
        info["weights_sha256"] = weights_digest(flat)
        meta_parts[part] = info
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "kind": entry.kind,
        "model_type": model_type,
        "config": dict(top_config),
        "parts": meta_parts,
    }
    with fileio.staged_dir(out_dir) as tmp:
        for part, flat in parts.items():
            tree = unflatten({k: np.asarray(v, np.float32) for k, v in flat.items()})
            with _checkpointer() as ckpt:
                ckpt.save(os.path.join(tmp, part), tree)
        if any("tokenizer" in info for info in meta_parts.values()):
            tokenizer.save(os.path.join(tmp, TOKENIZER_DIR))
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
    return os.path.abspath(out_dir)


def save(towers: Tower | Sequence[Tower], out_dir: str | os.PathLike) -> str:
    """Writes one tower part, or several parts of the same model (SigLIP vision + text), converted."""
    towers = [towers] if isinstance(towers, Tower) else list(towers)
    if not towers:
        raise ValueError("nothing to save")
    first = towers[0]
    parts = [t.part for t in towers]
    if len(set(parts)) != len(parts) or any(t.model_type != first.model_type for t in towers):
        raise ValueError(
            f"save takes distinct parts of one model; got {[(t.model_type, t.part) for t in towers]}"
        )
    tokenizers = [t.tokenizer for t in towers if t.tokenizer is not None]
    return write_converted(
        out_dir,
        first.source_config,
        {t.part: {k: np.asarray(v, np.float32) for k, v in flatten(t.params).items()} for t in towers},
        {t.part: t.processor_config for t in towers},
        tokenizers[0] if tokenizers else None,
    )


def create_random(
    out_dir: str | os.PathLike,
    kind: str,
    hf_config: Mapping[str, Any],
    seed: int = 0,
    tokenizer_model: str | os.PathLike | None = None,
) -> str:
    """Writes a converted tower of random weights for ``hf_config`` (all its parts), without torch.

    ``kind`` ("dinov2" | "siglip") must agree with the config's ``model_type``; a SigLIP config with a text
    part gets the tokenizer transformers builds from ``tokenizer_model`` (SigLIP: a ``spiece.model``; BERT: a
    ``vocab.txt``), saved with it. Weights are
    normal(0, initializer_range)
    with LayerNorms at identity, like HF's init in distribution (not bit-for-bit).
    """
    config = dict(hf_config)
    config.setdefault("model_type", kind)
    entry = model_type_entry(str(config["model_type"]))
    if entry.kind != kind:
        raise ValueError(f"kind {kind!r} does not match model_type {config['model_type']!r} ({entry.kind})")
    std = float(config.get("initializer_range", 0.02))
    parts = {}
    for i, part in enumerate(sorted(entry.parts)):
        family, cfg = part_config(config, part)
        parts[part] = random_init(family.specs(cfg), seed * 1000 + i, std)
    tokenizer = None
    if tokenizer_model and "text" in entry.parts:
        tokenizer = TextTokenizer.from_file(tokenizer_model, entry.kind)
    return write_converted(out_dir, config, parts, None, tokenizer)


def tiny_config(kind: str) -> dict[str, Any]:
    """A tiny HF-style config (hidden 32, 2 layers, 2 heads, 32x32 images, patch 8) for tests and smoke runs.

    ``kind``: "dinov2", "siglip" (full: vision + text, vocabulary 500 to fit :func:`train_sentencepiece`),
    "siglip_vision_model", "siglip_text_model", "resnet" or "bert" (SMART baseline). Returns a fresh dict.
    """
    common = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "layer_norm_eps": 1e-6}
    vision = {
        **common,
        "intermediate_size": 64,
        "image_size": 32,
        "patch_size": 8,
        "num_channels": 3,
        "hidden_act": "gelu_pytorch_tanh",
    }
    text = {
        **common,
        "intermediate_size": 64,
        "vocab_size": 500,
        "max_position_embeddings": 64,
        "hidden_act": "gelu_pytorch_tanh",
    }
    configs = {
        "dinov2": {
            "model_type": "dinov2",
            **common,
            "mlp_ratio": 4,
            "image_size": 32,
            "patch_size": 8,
            "hidden_act": "gelu",
            "layerscale_value": 1.0,
            "use_swiglu_ffn": False,
        },
        "siglip": {"model_type": "siglip", "vision_config": vision, "text_config": text},
        "siglip_vision_model": {"model_type": "siglip_vision_model", **vision},
        "siglip_text_model": {"model_type": "siglip_text_model", **text},
        # SMART baseline towers: a 4-stage bottleneck ResNet (final width 64) and a 2-layer BERT.
        "resnet": {
            "model_type": "resnet",
            "embedding_size": 8,
            "hidden_sizes": [16, 32, 48, 64],
            "depths": [1, 2, 1, 1],
            "layer_type": "bottleneck",
        },
        "bert": {
            "model_type": "bert",
            **common,
            "layer_norm_eps": 1e-12,
            "intermediate_size": 64,
            "vocab_size": 500,
            "max_position_embeddings": 128,
            "hidden_act": "gelu",
        },
    }
    if kind not in configs:
        raise ValueError(
            f"no tiny config for {kind!r}; known: {sorted(configs)} (model types: {sorted(MODEL_TYPES)})"
        )
    return copy.deepcopy(configs[kind])
