"""The SMART baseline's towers: ResNet (HF ResNetModel and torchvision layouts) and BERT (its tokenizer:
test_tokenizers.py).

Parity is fp32 against transformers' PyTorch models with random weights (tiny configs, plus one base-size
case each: microsoft/resnet-50 and bert-base-uncased configs), within 1e-4.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import save_file

from smartvlm_jax import towers
from smartvlm_jax.convert import hf as convert_hf
from smartvlm_jax.towers import resnet
from tests.support.hf import sample_images

TOL = 1e-4
RESNET50 = {"model_type": "resnet"}  # microsoft/resnet-50 == ResNetConfig defaults
BERT_BASE = {"model_type": "bert"}  # bert-base-uncased == BertConfig defaults

# A small WordPiece vocabulary: specials, punctuation, whole words and ## continuations.
VOCAB = [
    *"[PAD] [unused0] [UNK] [CLS] [SEP] [MASK]".split(),
    *"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    *"abcdefghijklmnopqrstuvwxyz0123456789",
    *"A B C H T W é 中 国".split(),
    *"how many circles are there the what is of in figure square".split(),
    *"##s ##es ##ing ##le ##ed tri ##ang ##les count number answer café".split(),
    *"How What Which which option ##ion un ##aff ##able".split(),
    *"cm km hours minutes total left right red blue ##ly".split(),
]
SENTENCES = [
    "How many circles are there in the figure?",
    "What is the total number of triangles?  Answer: 12 (cm).",
    "Which option: A, B or C? unaffable café CAFÉ Résumé",
    "x + y = 10; the squares are red & blue... 中国 text\twith\ntabs",
    "Counting: 1,2,3 -- left/right [MASK] hours [UNK]",
    "glued[MASK]tokens[SEP]and [cls] lower-case lookalikes",
    "supercalifragilisticexpialidocious " * 3,
    "",
    "word " * 150,  # longer than 110 tokens: truncated, [SEP] kept
]


def hf_module(config: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    """Random transformers ResNetModel / BertModel, with non-trivial norms and BatchNorm statistics."""
    kwargs = {k: v for k, v in config.items() if k != "model_type"}
    torch.manual_seed(seed)
    if config["model_type"] == "resnet":
        model = transformers.ResNetModel(transformers.ResNetConfig(**kwargs))
    else:
        model = transformers.BertModel(transformers.BertConfig(**kwargs))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower() or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
        if config["model_type"] == "resnet":
            # Calibrate BatchNorm statistics on a batch (cumulative average), as a trained network's are, so
            # activations keep an O(1) scale through the depth and the test sees real running statistics.
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.reset_running_stats()
                    m.momentum = None
            # The last BatchNorm of each residual branch gets small scales, as in trained ResNets, so the
            # residual stream does not grow to O(100) at depth 50 (1e-4 would then be a 1e-6 relative test).
            for name, m in model.named_modules():
                last = (
                    ".layer.2.normalization"
                    if config["layer_type"] == "bottleneck"
                    else ".layer.1.normalization"
                )
                if name.endswith(last):
                    m.weight.uniform_(0.05, 0.3)
            model.train()(pixel_values=torch.randn(4, config.get("num_channels", 3), 64, 64))
    return model.eval()


def resnet_reference(model: torch.nn.Module, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(last feature map as tokens [B, h*w, C], pooler_output [B, C]) from transformers."""
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(np.asarray(pixels)).permute(0, 3, 1, 2))
    hidden = out.last_hidden_state.permute(0, 2, 3, 1)
    return hidden.reshape(hidden.shape[0], -1, hidden.shape[-1]).numpy(), out.pooler_output[
        :, :, 0, 0
    ].numpy()


def bert_reference(model: torch.nn.Module, ids: np.ndarray) -> np.ndarray:
    ids_t = torch.from_numpy(np.asarray(ids, np.int64))
    with torch.no_grad():
        return model(input_ids=ids_t, attention_mask=(ids_t != 0).long()).last_hidden_state.numpy()


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("".join(t + "\n" for t in VOCAB), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"layer_type": "basic", "depths": [1, 1, 1, 1]},
        {"downsample_in_bottleneck": True, "downsample_in_first_stage": True},
    ],
)
def test_tiny_resnet_matches_transformers(tmp_path, variant):
    config = {**towers.tiny_config("resnet"), **variant}
    model = hf_module(config)
    model.save_pretrained(tmp_path)
    tower = towers.load(tmp_path, part="vision")
    pixels = np.random.default_rng(0).normal(size=(2, 64, 48, 3)).astype(np.float32)
    ours = np.asarray(tower.encode(pixels))
    hidden, pooled = resnet_reference(model, pixels)
    assert ours.shape == hidden.shape and ours.shape[::2] == (2, config["hidden_sizes"][-1])
    assert tower.hidden_size == config["hidden_sizes"][-1]
    np.testing.assert_allclose(ours, hidden, atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(tower.pooled(tower.params, ours)), pooled, atol=TOL, rtol=0)


def torchvision_state(model: torch.nn.Module, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict torchvision's resnet would have for this model, built name by name from
    torchvision's naming (conv1/bn1, layerS.I.convJ/bnJ, layerS.I.downsample.0/1, fc), plus its classifier."""
    src = model.state_dict()
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    out = {"conv1.weight": src["embedder.embedder.convolution.weight"]}
    out.update({f"bn1.{f}": src[f"embedder.embedder.normalization.{f}"] for f in bn})
    for s, depth in enumerate(config["depths"]):
        for i in range(depth):
            hf = f"encoder.stages.{s}.layers.{i}"
            tv = f"layer{s + 1}.{i}"
            for j in range(3):
                out[f"{tv}.conv{j + 1}.weight"] = src[f"{hf}.layer.{j}.convolution.weight"]
                out.update({f"{tv}.bn{j + 1}.{f}": src[f"{hf}.layer.{j}.normalization.{f}"] for f in bn})
            if i == 0:
                out[f"{tv}.downsample.0.weight"] = src[f"{hf}.shortcut.convolution.weight"]
                out.update({f"{tv}.downsample.1.{f}": src[f"{hf}.shortcut.normalization.{f}"] for f in bn})
    out["fc.weight"] = torch.randn(1000, config["hidden_sizes"][-1])
    out["fc.bias"] = torch.randn(1000)
    return {k: v.contiguous() for k, v in out.items()}


def test_torchvision_key_names():
    assert resnet.torchvision_key("conv1.weight") == "embedder.embedder.convolution.weight"
    assert resnet.torchvision_key("bn1.running_mean") == "embedder.embedder.normalization.running_mean"
    assert (
        resnet.torchvision_key("layer1.0.downsample.0.weight")
        == "encoder.stages.0.layers.0.shortcut.convolution.weight"
    )
    assert (
        resnet.torchvision_key("layer4.2.bn3.running_var")
        == "encoder.stages.3.layers.2.layer.2.normalization.running_var"
    )
    assert (
        resnet.torchvision_key("layer3.5.conv2.weight")
        == "encoder.stages.2.layers.5.layer.1.convolution.weight"
    )
    assert resnet.torchvision_key("fc.weight") == "fc.weight"


@pytest.mark.slow
def test_resnet50_torchvision_layout_matches_transformers(tmp_path):
    """Base size: a torchvision-named ResNet-50 state dict converts (CLI) and equals transformers' model."""
    config = {**resnet.DEFAULTS, **RESNET50}
    model = hf_module(config, seed=1)
    state = torchvision_state(model, config)
    assert len(state) == 320  # torchvision resnet50().state_dict() has 320 entries (fc, num_batches_tracked)
    src = tmp_path / "tv"
    src.mkdir()
    save_file(state, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps(RESNET50))
    assert convert_hf.main(["--src", str(src), "--out", str(tmp_path / "out")]) == 0

    tower = towers.load(tmp_path / "out", part="vision")
    pixels = tower.preprocess(sample_images()[:2])
    assert pixels.shape == (2, 224, 224, 3)
    ours = np.asarray(tower.encode(pixels))
    hidden, pooled = resnet_reference(model, np.asarray(pixels))
    assert ours.shape == (2, 49, 2048)
    np.testing.assert_allclose(ours, hidden, atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(tower.pooled(tower.params, ours)), pooled, atol=TOL, rtol=0)


def test_torchvision_layout_strict(tmp_path):
    config = towers.tiny_config("resnet")
    state = torchvision_state(hf_module(config), config)
    state["layer1.0.conv4.weight"] = torch.zeros(1)
    del state["layer2.1.bn2.running_var"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(state, str(tmp_path / "model.safetensors"))
    # Keys are reported in transformers' naming, after the torchvision rename.
    with pytest.raises(
        ValueError, match=r"unexpected key encoder\.stages\.0\.layers\.0\.layer\.3\.conv"
    ) as err:
        towers.load(tmp_path)
    assert "missing key encoder.stages.1.layers.1.layer.1.normalization.running_var" in str(err.value)


def test_resnet_preprocessing_is_torchvision_imagenet():
    """Shorter side 232 (PIL bilinear), centre crop 224, ImageNet mean/std."""
    from smartvlm_jax.towers import preprocess

    resizer, normalize = preprocess.from_processor_config(preprocess.default_processor("resnet", {}))
    image = np.random.default_rng(0).integers(0, 256, size=(224, 300, 3), dtype=np.uint8)
    from PIL import Image

    big = Image.fromarray(image).resize((310, 232), Image.Resampling.BILINEAR)
    expected = np.asarray(big)[4:228, 43:267]
    np.testing.assert_array_equal(resizer(image), expected)
    x = np.asarray(normalize(expected[None]))[0]
    np.testing.assert_allclose(
        x[0, 0],
        (expected[0, 0] / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
        atol=1e-5,
    )


def test_tiny_bert_matches_transformers_with_padding(tmp_path, vocab_file):
    config = towers.tiny_config("bert")
    model = hf_module(config)
    model.save_pretrained(tmp_path)
    transformers.BertTokenizer(vocab=vocab_file).save_pretrained(tmp_path)  # writes tokenizer.json
    tower = towers.load(tmp_path, part="text")
    ids = tower.tokenize(SENTENCES[:4])
    ours = np.asarray(tower.encode(ids))
    assert ours.shape == (4, 110, 32)
    np.testing.assert_allclose(ours, bert_reference(model, ids), atol=TOL, rtol=0)
    # Padding never changes the real positions: the unpadded sentence gives the same states.
    n = int((ids[1] != 0).sum())
    alone = np.asarray(tower.apply(tower.params, ids[1:2, :n]))
    np.testing.assert_allclose(alone[0], ours[1, :n], atol=TOL, rtol=0)
    with torch.no_grad():
        mask = torch.from_numpy((ids != 0).astype(np.int64))
        pooled = model(input_ids=torch.from_numpy(ids.astype(np.int64)), attention_mask=mask).pooler_output
    np.testing.assert_allclose(np.asarray(tower.pooled(tower.params, ours)), pooled.numpy(), atol=TOL, rtol=0)

    # Converted format: weights and tokenizer round-trip and load without the HF directory.
    out = towers.save(tower, tmp_path / "converted")
    again = towers.load(out, part="text")
    assert os.path.isfile(os.path.join(out, "tokenizer", "tokenizer.json"))
    np.testing.assert_array_equal(again.tokenize(SENTENCES), tower.tokenize(SENTENCES))
    np.testing.assert_allclose(np.asarray(again.encode(ids)), ours, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_bert_base_matches_transformers(tmp_path):
    """Base size (bert-base-uncased config), BertForPreTraining-style "bert." prefix and cls.* heads."""
    model = hf_module(BERT_BASE, seed=2)
    state = {f"bert.{k}": v.contiguous() for k, v in model.state_dict().items()}
    state["cls.predictions.bias"] = torch.zeros(30522)
    state["cls.seq_relationship.weight"] = torch.zeros(2, 768)
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(BERT_BASE))
    tower = towers.load(tmp_path, part="text")
    ids = np.zeros((2, 110), np.int32)
    rng = np.random.default_rng(0)
    ids[0, :17] = [101, *rng.integers(1000, 30000, 15), 102]
    ids[1, :60] = [101, *rng.integers(1000, 30000, 58), 102]
    ours = np.asarray(tower.encode(ids))
    assert ours.shape == (2, 110, 768)
    np.testing.assert_allclose(ours, bert_reference(model, ids), atol=TOL, rtol=0)


def test_create_random_baseline_towers(tmp_path, vocab_file):
    """Torch-free random towers (for smoke runs): ResNet at 224 px, BERT with a vocab.txt tokenizer."""
    rn = towers.load(towers.create_random(tmp_path / "rn", "resnet", towers.tiny_config("resnet")))
    assert rn.image_size == 224 and rn.kind == "resnet"
    feats = np.asarray(rn.encode(rn.preprocess(sample_images()[:2])))
    assert feats.shape == (2, 49, 64) and np.isfinite(feats).all() and feats.std() > 0
    path = towers.create_random(
        tmp_path / "bert", "bert", towers.tiny_config("bert"), tokenizer_model=vocab_file
    )
    text = towers.load(path, part="text")
    assert (
        text.tokenize(["how many circles"])[0, :5].tolist()
        == [3, 4 + 0, 0, 0, 0][:1] + text.tokenize(["how many circles"])[0, 1:5].tolist()
    )
    with pytest.raises(ValueError, match="vocab_size"):
        towers.create_random(
            tmp_path / "bad",
            "bert",
            {**towers.tiny_config("bert"), "vocab_size": 10},
            tokenizer_model=vocab_file,
        )
