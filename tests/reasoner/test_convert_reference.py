"""Reference-layout checkpoints (the port's state_dict, reference key names) -> model dir -> same logits."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from smartvlm_jax import reasoner  # noqa: E402
from smartvlm_jax.convert import reference  # noqa: E402
from tests.support.reasoner import random_batch, small_config  # noqa: E402
from tests.support.torch_port import head as port_lib  # noqa: E402

PIDS = [16, 3, 16, 58, 39, 3, 94, 16, 18]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = small_config(True)
    torch.manual_seed(0)
    port = port_lib.TorchSmarterHead(cfg).eval()
    path = tmp_path_factory.mktemp("ref") / "ckpt_fused_dinov2_siglip_siglip_0.pth"
    torch.save({"net": port_lib.reference_state_dict(port), "acc": 0.5, "epoch": 3}, path)
    return cfg, port, path


def test_cli_converts_and_reproduces_port_logits(checkpoint, tmp_path):
    from smartvlm_jax.convert.__main__ import main as convert_main

    cfg, port, path = checkpoint
    ids = ",".join(str(p) for p in cfg.puzzle_ids)
    out = tmp_path / "model"
    argv = ["reference", "--ckpt", str(path), "--puzzles", ids, "--out", str(out), "--variant", "siglip"]
    assert convert_main(argv) == 0
    model, variables, cfg2 = reasoner.load(out)
    assert cfg2.reference_quirks and list(cfg2.num_classes) == list(cfg.num_classes)
    assert (cfg2.repr_size, cfg2.h_sz, cfg2.max_qlen, cfg2.num_heads) == (16, 32, 7, 2)
    vision, text, pid, _ = random_batch(cfg, PIDS)
    pid_t = torch.from_numpy(pid).long()
    with torch.no_grad():
        expected = port_lib.padded_logits(
            port(torch.from_numpy(vision), torch.from_numpy(text), pid_t), pid_t, cfg
        )
    got = np.asarray(jax.jit(model.apply)(variables, vision, text, pid))
    assert np.abs(got - expected.numpy()).max() <= 1e-5


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda sd: sd.pop("qf.crossattention.value.weight"), "missing key qf.crossattention.value.weight"),
        (lambda sd: sd.__setitem__("qf.extra.weight", torch.zeros(3)), "unexpected key qf.extra.weight"),
        (lambda sd: sd.__setitem__("c.ln.weight", torch.zeros(5)), "wrong shape for key c.ln.weight"),
        (lambda sd: sd.pop("ans_decoder.3.weight_hh_l0"), "ans_decoder.3.weight_hh_l0"),
    ],
)
def test_bad_checkpoints_fail_without_output(checkpoint, tmp_path, capsys, edit, message):
    cfg, port, _ = checkpoint
    sd = port_lib.reference_state_dict(port)
    edit(sd)
    path = tmp_path / "bad.pth"
    torch.save({"net": sd}, path)
    out = tmp_path / "model"
    ids = ",".join(str(p) for p in cfg.puzzle_ids)
    assert (
        reference.main(["--ckpt", str(path), "--puzzles", ids, "--out", str(out), "--variant", "siglip"]) != 0
    )
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_wrong_puzzle_list_is_rejected(checkpoint, tmp_path, capsys):
    _, _, path = checkpoint
    out = tmp_path / "model"
    assert (
        reference.main(["--ckpt", str(path), "--puzzles", "3,7", "--out", str(out), "--variant", "siglip"])
        != 0
    )
    assert "unexpected key ans_decoder.3." in capsys.readouterr().err
    assert not out.exists()
