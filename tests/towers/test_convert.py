"""HF directory formats, the converted format, the converter CLI and its errors, configs of every size."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from smartvlm_jax import towers
from smartvlm_jax.convert import __main__ as cli
from smartvlm_jax.towers import hf as towers_hf
from smartvlm_jax.towers import params as tparams
from smartvlm_jax.towers.registry import part_config
from smartvlm_jax.towers.released import RELEASED
from tests.support.hf import hf_config_objects, hf_model, save_hf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _flat(tower):
    return {k: np.asarray(v) for k, v in tparams.flatten(tower.params).items()}


def _assert_same_params(a, b):
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def test_prefixes_full_vision_only_text_only_agree(tmp_path):
    """A full SiglipModel (prefixed keys) and its vision/text halves saved alone give the same weights."""
    full = hf_model(towers.tiny_config("siglip"), seed=5)
    full_dir = save_hf(full, str(tmp_path / "full"))
    v_dir = save_hf(full.vision_model, str(tmp_path / "v"))
    assert not any(k.startswith("vision_model.") for k in load_file(os.path.join(v_dir, "model.safetensors")))
    _assert_same_params(towers.load(full_dir, "vision"), towers.load(v_dir, "vision"))
    t_dir = str(tmp_path / "t")
    save_hf(full.text_model, t_dir)
    assert not any(k.startswith("text_model.") for k in load_file(os.path.join(t_dir, "model.safetensors")))
    _assert_same_params(towers.load(full_dir, "text"), towers.load(t_dir, "text"))


def test_sharded_safetensors_and_pytorch_bin(tmp_path, hf_tiny):
    ref = towers.load(hf_tiny["dinov2"])
    model = hf_model(towers.tiny_config("dinov2"))
    sharded = save_hf(model, str(tmp_path / "sharded"), max_shard_size="20KB")
    assert os.path.isfile(os.path.join(sharded, "model.safetensors.index.json"))
    assert len([f for f in os.listdir(sharded) if f.endswith(".safetensors")]) > 1
    _assert_same_params(towers.load(sharded), ref)

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    state = load_file(os.path.join(hf_tiny["dinov2"], "model.safetensors"))
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, bin_dir / "pytorch_model.bin")
    (bin_dir / "config.json").write_text(open(os.path.join(hf_tiny["dinov2"], "config.json")).read())
    _assert_same_params(towers.load(str(bin_dir)), ref)


def test_pytorch_bin_without_torch_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(RuntimeError, match="needs PyTorch"):
        towers_hf.read_state(str(tmp_path))


def test_new_style_dinov2_names_are_accepted(hf_tiny):
    """transformers' in-memory names (q_proj, gate_proj/up_proj) map onto the released ones."""
    config = {**towers.tiny_config("dinov2"), "use_swiglu_ffn": True}
    model = hf_model(config)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    if not any(".attention.q_proj." in k for k in state):  # transformers < 5.2x keeps the released names
        pytest.skip(f"transformers {transformers.__version__} names DINOv2 weights as released")
    assert any(".mlp.gate_proj." in k for k in state)
    flat = towers_hf.convert_part(config, "vision", state)
    family, cfg = part_config(config, "vision")
    tparams.check_tree(family.specs(cfg), flat, "dinov2")


def test_cli_converts_and_converted_loads_without_torch(tmp_path, hf_tiny):
    out = tmp_path / "conv"
    assert cli.main(["hf", "--src", hf_tiny["siglip"], "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["text", "tokenizer", "towers.json", "vision"]
    for part in ("vision", "text"):
        _assert_same_params(towers.load(str(out), part), towers.load(hf_tiny["siglip"], part))
    code = (
        "import sys, numpy as np; from smartvlm_jax import towers\n"
        f"v = towers.load({str(out)!r}, 'vision'); t = towers.load({str(out)!r}, 'text')\n"
        "h = v.encode(v.preprocess([np.zeros((224, 250, 3), np.uint8)])); e = t.encode(t.tokenize(['hi']))\n"
        "assert h.shape == (1, 16, 32) and e.shape == (1, 64, 32)\n"
        "assert 'torch' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def test_save_roundtrip_and_create_random(tmp_path, spiece):
    src = towers.create_random(
        tmp_path / "r", "siglip", towers.tiny_config("siglip"), seed=1, tokenizer_model=spiece
    )
    vision, text = towers.load(src, "vision"), towers.load(src, "text")
    towers.save([vision, text], tmp_path / "copy")
    _assert_same_params(towers.load(tmp_path / "copy", "vision"), vision)
    again = towers.load(tmp_path / "copy", "text")
    _assert_same_params(again, text)
    np.testing.assert_array_equal(again.tokenize(["how many?"]), text.tokenize(["how many?"]))
    other = towers.create_random(tmp_path / "r2", "siglip", towers.tiny_config("siglip"), seed=2)
    assert not np.array_equal(_flat(towers.load(other))["head.probe"], _flat(vision)["head.probe"])
    with pytest.raises(FileExistsError):
        towers.save(vision, tmp_path / "copy")
    with pytest.raises(ValueError, match="does not match model_type"):
        towers.create_random(tmp_path / "x", "dinov2", towers.tiny_config("siglip"))
    assert not (tmp_path / "x").exists()
    assert towers.tiny_config("dinov2") is not towers.tiny_config("dinov2")
    assert pickle.loads(pickle.dumps(vision.resizer)) == vision.resizer


def _corrupt_and_convert(tmp_path, hf_dir, edit):
    bad = tmp_path / "bad"
    bad.mkdir()
    config = json.load(open(os.path.join(hf_dir, "config.json")))
    state = load_file(os.path.join(hf_dir, "model.safetensors"))
    config, state = edit(config, state)
    (bad / "config.json").write_text(json.dumps(config))
    save_file(state, str(bad / "model.safetensors"))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": REPO}
    run = subprocess.run(
        [sys.executable, "-m", "smartvlm_jax.convert", "hf", "--src", str(bad), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
    return run.stderr


def _drop(config, state):
    state.pop("encoder.layer.1.mlp.fc2.bias")
    return config, state


def _extra(config, state):
    state["encoder.layer.0.surprise.weight"] = np.zeros(3, np.float32)
    return config, state


def _shape(config, state):
    state["encoder.layer.0.attention.attention.query.weight"] = np.zeros((32, 16), np.float32)
    return config, state


def _type(config, state):
    return {**config, "model_type": "gpt2"}, state


@pytest.mark.parametrize(
    "edit, expected",
    [
        (_drop, ["missing key encoder.layer.1.mlp.fc2.bias", "dinov2"]),
        (_extra, ["unexpected key encoder.layer.0.surprise.weight"]),
        (_shape, ["encoder.layer.0.attention.attention.query.weight", "(32, 16)", "(32, 32)"]),
        (_type, ["unsupported model type 'gpt2'"]),
    ],
)
def test_converter_rejects_bad_input(tmp_path, hf_tiny, edit, expected):
    stderr = _corrupt_and_convert(tmp_path, hf_tiny["dinov2"], edit)
    for text in expected:
        assert text in stderr, stderr


def test_text_tower_without_tokenizer_is_refused(tmp_path, hf_tiny, capsys):
    """A SigLIP directory without spiece.model: converting its text part is an error that says what is
    missing (it would load, then fail at tokenize); the vision part alone still converts."""
    src = tmp_path / "no_tokenizer"
    shutil.copytree(hf_tiny["siglip"], src)
    for name in os.listdir(src):
        if name.startswith(("spiece", "tokenizer", "special_tokens")):
            os.remove(src / name)
    assert cli.main(["hf", "--src", str(src), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "has a text tower but no tokenizer (SigLIP: spiece.model" in err and "--parts vision" in err
    assert not (tmp_path / "out").exists()
    assert cli.main(["hf", "--src", str(src), "--out", str(tmp_path / "vision"), "--parts", "vision"]) == 0


DINOV2_SIZES = {  # released facebook/dinov2-* configs
    "small": {"hidden_size": 384, "num_attention_heads": 6, "num_hidden_layers": 12},
    "base": {"hidden_size": 768, "num_attention_heads": 12, "num_hidden_layers": 12},
    "large": {"hidden_size": 1024, "num_attention_heads": 16, "num_hidden_layers": 24},
    "giant": {
        "hidden_size": 1536,
        "num_attention_heads": 24,
        "num_hidden_layers": 40,
        "use_swiglu_ffn": True,
    },
}
_RELEASED_SO400M = RELEASED["google/siglip-so400m-patch14-384"]
SO400M = {**_RELEASED_SO400M, "text_config": {**_RELEASED_SO400M["text_config"], "projection_size": 1152}}


def _meta_shapes(config):
    """Saved-checkpoint key -> shape of a transformers model built on the meta device (no memory)."""
    import transformers

    cls = {"dinov2": transformers.Dinov2Model, "siglip": transformers.SiglipModel}[config["model_type"]]
    with torch.device("meta"):
        model = cls(hf_config_objects(config))
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return towers_hf.normalize_keys(config["model_type"], {k: np.empty(0) for k in state}), state


@pytest.mark.parametrize("size", sorted(DINOV2_SIZES))
def test_dinov2_sizes_match_transformers_shapes(size):
    config = {"model_type": "dinov2", "image_size": 518, "patch_size": 14, **DINOV2_SIZES[size]}
    _, state = _meta_shapes(config)
    family, cfg = part_config(config, "vision")
    specs = family.specs(cfg)
    n_ours = sum(int(np.prod(s.shape)) for s in specs.values())
    assert n_ours == sum(int(np.prod(s)) for s in state.values())
    expected = {"small": 22_056_576, "base": 86_580_480, "large": 304_368_640, "giant": 1_136_480_768}
    assert abs(n_ours - expected[size]) / expected[size] < 2e-3


def test_siglip_so400m_shapes_match_transformers():
    _, state = _meta_shapes(SO400M)
    for part, prefix in (("vision", "vision_model."), ("text", "text_model.")):
        family, cfg = part_config(SO400M, part)
        for spec in family.specs(cfg).values():
            assert state[prefix + spec.hf_key] == spec.hf_shape(), spec.hf_key
    family, vision_cfg = part_config(SO400M, "vision")
    n_vision = sum(int(np.prod(s.shape)) for s in family.specs(vision_cfg).values())
    assert 4.2e8 < n_vision < 4.4e8  # "so400m": ~428M vision parameters


def test_a_truncated_safetensors_file_is_one_line_naming_it(tmp_path, hf_tiny, capsys):
    src = tmp_path / "truncated"
    shutil.copytree(hf_tiny["dinov2"], src)
    weights = src / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # an interrupted download
    with pytest.raises(ValueError, match=rf"^{weights} is not a readable safetensors file \(truncated\?\)"):
        towers.load(str(src), "vision")
    assert cli.main(["hf", "--src", str(src), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        f"error: converting {src}: {weights} is not a readable safetensors file (truncated?)"
    )
    assert "\n" not in err


def test_converted_towers_refuse_glob_characters_in_their_path(tmp_path, hf_tiny, capsys):
    out = tmp_path / "towers[1]"
    assert cli.main(["hf", "--src", hf_tiny["dinov2"], "--out", str(out)]) == 1
    assert "holds [ ]: Orbax finds checkpoint files by a glob pattern" in capsys.readouterr().err
    assert not out.exists()


def test_a_relative_tokenizer_path_pickles_from_any_directory(tmp_path, hf_tiny, monkeypatch):
    parent, name = os.path.split(hf_tiny["siglip"])
    monkeypatch.chdir(parent)
    text = towers.load(name, "text")  # relative
    assert os.path.isabs(text.tokenizer.hf.vocab_file)
    payload = pickle.dumps(text.tokenizer)
    monkeypatch.chdir(tmp_path)  # a worker that starts elsewhere
    np.testing.assert_array_equal(pickle.loads(payload)(["how many?"]), text.tokenizer(["how many?"]))
