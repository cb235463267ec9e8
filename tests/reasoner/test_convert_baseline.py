"""SMART baseline checkpoints (the port's state_dict: reference names) -> model dir -> the port's logits."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from smartvlm_jax import reasoner  # noqa: E402
from smartvlm_jax.convert import reference  # noqa: E402
from tests.support.baseline import PIDS, batch, small_config  # noqa: E402
from tests.support.torch_port import baseline as port_lib  # noqa: E402
from tests.support.torch_port.head import padded_logits  # noqa: E402


def state_dict(port) -> dict:
    return {k: v.detach().clone() for k, v in port.state_dict().items()}


@pytest.fixture(scope="module", params=[{}, {"use_single_image_head": True}], ids=["per_puzzle", "single"])
def checkpoint(request, tmp_path_factory):
    cfg = small_config(True, **request.param)
    torch.manual_seed(0)
    port = port_lib.TorchBaselineHead(cfg).eval()
    sd = state_dict(port)
    assert any(k.startswith("o_encoder.") for k in sd) and "ans_decoder.0.0.weight" in sd
    path = tmp_path_factory.mktemp("ref") / "ckpt_resnet50_bert_0.pth"
    torch.save({"net": sd, "acc": 0.1, "epoch": 3}, path)
    return cfg, port, path


def test_cli_converts_and_reproduces_port_logits(checkpoint, tmp_path):
    from smartvlm_jax.convert.__main__ import main as convert_main

    cfg, port, path = checkpoint
    out = tmp_path / "model"
    ids = ",".join(str(p) for p in cfg.puzzle_ids)
    assert convert_main(["reference", "--ckpt", str(path), "--puzzles", ids, "--out", str(out)]) == 0
    model, variables, got_cfg = reasoner.load(out)
    assert (got_cfg.head, got_cfg.variant, got_cfg.reference_quirks) == ("baseline", "resnet", True)
    assert got_cfg.use_single_image_head == cfg.use_single_image_head
    assert (got_cfg.repr_size, got_cfg.h_sz, got_cfg.vision_dim, got_cfg.text_dim) == (16, 8, 20, 12)
    assert list(got_cfg.num_classes) == list(cfg.num_classes)
    vision, text, pids, _ = batch(cfg)
    t_pids = torch.from_numpy(pids.astype(np.int64))
    with torch.no_grad():
        out = port(torch.from_numpy(vision), torch.from_numpy(np.array(text)), t_pids)  # a writable copy
        expected = padded_logits(out, t_pids, cfg)
    got = np.asarray(jax.jit(model.apply)(variables, vision, text, pids))
    assert got.shape == (len(PIDS), cfg.num_decode_steps, max(cfg.num_classes))
    assert np.abs(got - expected.numpy()).max() <= 1e-5


def test_round_trip_gives_back_every_used_weight(checkpoint):
    cfg, port, _ = checkpoint
    sd = {k: v.numpy() for k, v in state_dict(port).items()}
    got_cfg = reference.config_from_reference(sd, list(cfg.puzzle_ids))
    back = reference.reference_from_params(reference.params_from_reference(sd, got_cfg), got_cfg)
    dummy = ("im_encoder.0.0.", "ans_decoder.0.0.", "o_encoder.")  # unused by the forward pass
    used = {k for k in sd if not k.startswith(dummy)}
    assert used <= set(back) and all(k.startswith(dummy) for k in set(back) - used)
    for k in used:
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda sd: sd.pop("q_lstm.bias_hh_l0_reverse"), "missing key q_lstm.bias_hh_l0_reverse"),
        (lambda sd: sd.pop("ans_decoder.0.0.bias"), "missing key ans_decoder.0.0.bias"),
        (lambda sd: sd.__setitem__("q_lstm.extra", torch.zeros(3)), "unexpected key q_lstm.extra"),
        (lambda sd: sd.__setitem__("q_MLP.bias", torch.zeros(5)), "wrong shape for key q_MLP.bias"),
        (lambda sd: sd.pop("ans_decoder.3.weight_hh_l0"), "ans_decoder.3.weight_hh_l0 (LSTM decoder"),
        (lambda sd: sd.pop("ans_decoder.1.4.weight"), "ans_decoder.1.4.weight (MLP decoder of puzzle 3)"),
    ],
)
def test_bad_checkpoints_fail_without_output(checkpoint, tmp_path, capsys, edit, message):
    cfg, port, _ = checkpoint
    sd = state_dict(port)
    edit(sd)
    path = tmp_path / "bad.pth"
    torch.save({"net": sd}, path)
    out = tmp_path / "model"
    ids = ",".join(str(p) for p in cfg.puzzle_ids)
    assert reference.main(["--ckpt", str(path), "--puzzles", ids, "--out", str(out)]) != 0
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_smarter_features_are_rejected(checkpoint, tmp_path, capsys):
    cfg, _, path = checkpoint
    out = tmp_path / "model"
    ids = ",".join(str(p) for p in cfg.puzzle_ids)
    assert (
        reference.main(["--ckpt", str(path), "--puzzles", ids, "--out", str(out), "--features", "fused"]) != 0
    )
    assert "ResNet-50 features" in capsys.readouterr().err
    assert not out.exists()
