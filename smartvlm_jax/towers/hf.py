"""Reading Hugging Face tower directories into our parameter trees (for `towers.load` and `convert hf`).

Reads ``config.json`` plus ``model.safetensors``, sharded safetensors with ``model.safetensors.index.json``,
or ``pytorch_model.bin`` (needs PyTorch, imported only then). Vision-only (``SiglipVisionModel``,
``Dinov2Model``), text-only (``SiglipTextModel``) and full ``SiglipModel`` checkpoints are accepted; their
key prefixes come from the tower registry. Conversion is strict: every missing key, unexpected key and
wrong shape is reported, naming the key, the shapes and the model type.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from smartvlm_jax.towers import resnet
from smartvlm_jax.towers.registry import model_type_entry, part_config
from smartvlm_jax.towers.tokenizer import TextTokenizer

# Key renames applied before matching, per model type: checkpoints written with transformers' newer
# module names are mapped onto the released (legacy) names our tables mirror.
ALIASES: dict[str, list[tuple[str, str | Callable[[re.Match], str]]]] = {
    "dinov2": [
        (r"\.attention\.q_proj\.", ".attention.attention.query."),
        (r"\.attention\.k_proj\.", ".attention.attention.key."),
        (r"\.attention\.v_proj\.", ".attention.attention.value."),
        (r"\.attention\.o_proj\.", ".attention.output.dense."),
        (r"\.mlp\.down_proj\.", ".mlp.weights_out."),
    ],
    # torchvision resnet50().state_dict() names (the SMART reference's ResNet-50) -> ResNetModel names.
    "resnet": [(r"^.*$", lambda m: resnet.torchvision_key(m.group(0)))],
    # Original TF-converted BERT checkpoints name LayerNorm parameters gamma/beta.
    "bert": [(r"\.LayerNorm\.gamma$", ".LayerNorm.weight"), (r"\.LayerNorm\.beta$", ".LayerNorm.bias")],
}
# Persistent buffers some older checkpoints carry; they are derived, not weights.
BUFFER_SUFFIXES = ("position_ids", "token_type_ids", "num_batches_tracked")


def read_config(path: str) -> dict[str, Any]:
    """``config.json`` of an HF directory; ValueError naming the file when it is not a JSON object."""
    file = os.path.join(path, "config.json")
    with open(file, encoding="utf-8") as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{file} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file} holds a {type(config).__name__}, not a JSON object")
    return config


def _load_safetensors(file: str) -> dict[str, np.ndarray]:
    """The tensors of ``file``; ValueError naming the file for one that is not whole safetensors (a
    truncated download, an interrupted copy)."""
    import safetensors
    from safetensors.numpy import load_file

    try:
        return dict(load_file(file))
    except safetensors.SafetensorError as e:
        raise ValueError(f"{file} is not a readable safetensors file (truncated?): {e}") from None


def _load_bin(file: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise RuntimeError(
            f"{file} is a PyTorch pickle; reading it needs PyTorch, which is not installed. Install torch or "
            "convert the checkpoint to safetensors."
        ) from e
    state = torch.load(file, map_location="cpu", weights_only=True)
    return {k: v.detach().to(torch.float32).numpy() for k, v in state.items()}


def read_state(path: str) -> dict[str, np.ndarray]:
    """All tensors of an HF directory as numpy arrays (single, sharded safetensors, or pytorch_model.bin)."""
    for index_name, loader in (
        ("model.safetensors.index.json", _load_safetensors),
        ("pytorch_model.bin.index.json", _load_bin),
    ):
        index = os.path.join(path, index_name)
        if os.path.isfile(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
            state: dict[str, np.ndarray] = {}
            for name in files:
                state.update(loader(os.path.join(path, name)))
            return state
    for name, loader in (("model.safetensors", _load_safetensors), ("pytorch_model.bin", _load_bin)):
        file = os.path.join(path, name)
        if os.path.isfile(file):
            return loader(file)
    raise FileNotFoundError(f"{path}: no model.safetensors, sharded safetensors index or pytorch_model.bin")


def normalize_keys(model_type: str, state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Applies :data:`ALIASES`; DINOv2 ``gate_proj`` + ``up_proj`` become the fused ``weights_in``."""
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        for pattern, repl in ALIASES.get(model_type, []):
            key = re.sub(pattern, repl, key)
        out[key] = value
    for key in [k for k in out if ".mlp.gate_proj." in k]:
        up_key = key.replace(".mlp.gate_proj.", ".mlp.up_proj.")
        if up_key in out:
            fused = np.concatenate([out.pop(key), out.pop(up_key)], axis=0)
            out[key.replace(".mlp.gate_proj.", ".mlp.weights_in.")] = fused
    return out


def convert_part(
    top_config: Mapping[str, Any], part: str, state: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Flat float32 weights of ``part`` from an HF state dict; ``ValueError`` listing every problem."""
    model_type = str(top_config.get("model_type"))
    entry = model_type_entry(model_type)
    family, cfg = part_config(top_config, part)
    specs = family.specs(cfg)
    state = normalize_keys(model_type, state)
    prefixes = entry.parts[part].prefixes
    prefix = max(prefixes, key=lambda p: sum(p + s.hf_key in state for s in specs.values()))
    other_prefixes = [p for name, src in entry.parts.items() if name != part for p in src.prefixes if p]
    problems: list[str] = []
    flat: dict[str, np.ndarray] = {}
    used = set()
    for key, spec in specs.items():
        hf_key = prefix + spec.hf_key
        if hf_key not in state:
            problems.append(f"missing key {hf_key} (expected shape {spec.hf_shape()})")
            continue
        used.add(hf_key)
        array = state[hf_key]
        if tuple(array.shape) != spec.hf_shape():
            problems.append(f"wrong shape for {hf_key}: got {tuple(array.shape)}, expected {spec.hf_shape()}")
            continue
        flat[key] = spec.from_hf(array)
    for hf_key in sorted(state):
        if (
            hf_key in used
            or hf_key in entry.ignored
            or hf_key.endswith(BUFFER_SUFFIXES)
            or any(hf_key.startswith(p) for p in other_prefixes)
        ):
            continue
        problems.append(f"unexpected key {hf_key}")
    if problems:
        raise ValueError(f"{model_type} {part} checkpoint does not match its config: " + "; ".join(problems))
    return flat


def read_tokenizer(path: str, kind: str) -> TextTokenizer | None:
    """The text tokenizer of the ``kind`` ("siglip" | "bert") tower in HF directory ``path``, built by
    transformers from its files (SigLIP: ``spiece.model``; BERT: ``tokenizer.json`` or ``vocab.txt``) and
    ``tokenizer_config.json``; None when the directory has none of them."""
    return TextTokenizer.from_dir(path, kind)


def read_processor(path: str) -> dict[str, Any] | None:
    """``preprocessor_config.json`` of an HF directory, if it has one."""
    file = os.path.join(path, "preprocessor_config.json")
    if not os.path.isfile(file):
        return None
    with open(file) as f:
        return json.load(f)


def read_part(
    path: str, part: str, state: Mapping[str, np.ndarray] | None = None
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any] | None, TextTokenizer | None]:
    """(top config, flat weights, processor settings, tokenizer) of one part of an HF directory."""
    config = read_config(path)
    model_type_entry(str(config.get("model_type")))  # unsupported types fail before reading weights
    family, _ = part_config(config, part)
    flat = convert_part(config, part, read_state(path) if state is None else state)
    processor = read_processor(path) if part == "vision" else None
    tokenizer = read_tokenizer(path, family.kind) if part == "text" else None
    return config, flat, processor, tokenizer
