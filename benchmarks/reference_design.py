"""The reference's training design, written here in PyTorch, as the baseline of ``benchmarks.throughput``.

What the published SMARTER code does every step, and what this module does the same way:
  * the loader yields images at shorter side 224 as float tensors (PIL open, RGB, bilinear resize,
    to-tensor) with the question text, label and puzzle id;
  * inside the step each image tensor is turned back into a PIL image and run through transformers' image
    processors (DINOv2: shorter side 256 bicubic + centre crop 224; SigLIP: 224x224 bicubic), the question
    through the SigLIP tokenizer; the frozen towers (``Dinov2Model``, ``SiglipModel``) run on every step,
    under ``no_grad``, and are mean-pooled;
  * the head is the PyTorch port (``tests.support.torch_port.head``: the reference's module layout and its
    Python loops over the puzzles of the batch), trained with AdamW + global-norm clipping + warm-up/cosine.

Nothing is cached: every epoch (and every validation) recomputes the towers, as the reference does.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import numpy as np
import torch
import transformers
from PIL import Image

from smartvlm_jax import metrics
from smartvlm_jax.data import smart101
from smartvlm_jax.towers import preprocess
from tests.support.torch_port import head as port_lib

TOWER_VARIANTS = {"fused": ("dinov2", "siglip"), "dinov2": ("dinov2",), "siglip": ("siglip",)}


def to_tensor(image: Image.Image) -> torch.Tensor:
    """torchvision's ``ToTensor`` on an RGB PIL image: float [3, H, W] in [0, 1]."""
    return torch.from_numpy(np.asarray(image, np.uint8).copy()).permute(2, 0, 1).float().div(255)


def to_pil(x: torch.Tensor) -> Image.Image:
    """torchvision's ``ToPILImage`` on a float [3, H, W] tensor (``mul(255).byte()``), as the reference."""
    return Image.fromarray(x.mul(255).byte().permute(1, 2, 0).numpy())


class ReferenceItems(torch.utils.data.Dataset):
    """The reference loader's item: (image tensor at shorter side 224, question, label [10], puzzle id)."""

    def __init__(self, rows: Sequence[smart101.Row]):
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, torch.Tensor, int, int]:
        row = self.rows[i]
        return (
            to_tensor(smart101.load_image(row.image_path)),
            row.question,
            torch.tensor(row.label, dtype=torch.int64),
            row.puzzle_id,
            i,
        )


def collate(items: list[tuple]) -> dict[str, Any]:
    """Images stay a list (their widths differ); the rest is stacked."""
    images, questions, labels, pids, index = zip(*items, strict=True)
    return {
        "images": list(images),
        "questions": list(questions),
        "labels": torch.stack(labels),
        "puzzle_ids": torch.tensor(pids, dtype=torch.int64),
        "index": list(index),
    }


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """LambdaLR factor: linear from 0 over ``warmup`` steps, then cosine to 0 at ``total`` (SPEC 7)."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class ReferenceDesign:
    """Frozen HF towers + processors + the ported head + AdamW, stepped the way the reference steps.

    ``compile_towers`` / ``compile_head`` wrap those modules in ``torch.compile`` (inductor).
    """

    def __init__(
        self,
        tower_dirs: dict[str, str],
        head_cfg: ml_collections.ConfigDict,
        optim_cfg: ml_collections.ConfigDict,
        total_steps: int,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        compile_towers: bool = False,
        compile_head: bool = False,
        seed: int = 0,
    ):
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        self.cfg = head_cfg
        self.names = TOWER_VARIANTS[head_cfg.variant]
        self.towers: dict[str, Callable] = {}
        self.processors: dict[str, Any] = {}
        siglip = transformers.SiglipModel.from_pretrained(tower_dirs["siglip"]).eval()
        siglip = siglip.to(self.device, self.dtype)
        modules = {"siglip": siglip.vision_model, "text": siglip.text_model}
        if "dinov2" in self.names:
            dino = transformers.Dinov2Model.from_pretrained(tower_dirs["dinov2"]).eval()
            modules["dinov2"] = dino.to(self.device, self.dtype)
            processor = preprocess.default_processor("dinov2", dino.config.to_dict())
            self.processors["dinov2"] = transformers.BitImageProcessorPil(**processor)
        if "siglip" in self.names:
            processor = preprocess.default_processor("siglip", siglip.config.vision_config.to_dict())
            self.processors["siglip"] = transformers.SiglipImageProcessorPil(**processor)
        self.towers = {k: torch.compile(m) if compile_towers else m for k, m in modules.items()}
        self.tokenizer = transformers.SiglipTokenizer.from_pretrained(tower_dirs["siglip"])
        self.head = port_lib.TorchSmarterHead(head_cfg).to(self.device)
        self.head_fn = torch.compile(self.head) if compile_head else self.head
        self.opt = torch.optim.AdamW(
            self.head.parameters(),
            lr=optim_cfg.lr,
            betas=(optim_cfg.b1, optim_cfg.b2),
            eps=optim_cfg.eps,
            weight_decay=optim_cfg.weight_decay,
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, warmup_cosine(optim_cfg.warmup_steps, total_steps)
        )
        self.grad_clip = float(optim_cfg.grad_clip)

    # -- the parts of a step ------------------------------------------------------------------------

    def pixel_values(self, images: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Back to PIL, then each tower's HF image processor (the reference's per-step preprocessing)."""
        pil = [to_pil(x) for x in images]
        return {
            name: proc(images=pil, return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
            for name, proc in self.processors.items()
        }

    def token_ids(self, questions: Sequence[str]) -> torch.Tensor:
        ids = self.tokenizer(
            [q.lower() for q in questions],
            padding="max_length",
            max_length=64,
            truncation=True,
            return_tensors="pt",
        )["input_ids"]
        return ids.to(self.device)

    @torch.no_grad()
    def tower_features(self, pixels: dict[str, torch.Tensor], ids: torch.Tensor):
        """Mean-pooled ``last_hidden_state`` of each vision tower (concatenated) and of the text tower."""
        vision = [
            self.towers[n](pixel_values=pixels[n]).last_hidden_state.float().mean(1) for n in self.names
        ]
        text = self.towers["text"](input_ids=ids).last_hidden_state.float().mean(1)
        return torch.cat(vision, dim=1), text

    def features(self, batch: dict[str, Any]):
        return self.tower_features(self.pixel_values(batch["images"]), self.token_ids(batch["questions"]))

    # -- steps --------------------------------------------------------------------------------------

    def head_step(self, vision: torch.Tensor, text: torch.Tensor, pids: torch.Tensor, labels: torch.Tensor):
        """Head forward (per-puzzle loops) + the reference criterion + backward + clip + AdamW."""
        self.head.train()
        outputs = self.head_fn(vision, text, pids)
        loss = port_lib.reference_loss(outputs, labels, pids)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.head.parameters(), self.grad_clip)
        self.opt.step()
        self.sched.step()
        return loss.detach()

    def train_step(self, batch: dict[str, Any]) -> torch.Tensor:
        """A whole training step from the loader's batch: preprocess, towers, head, optimiser."""
        vision, text = self.features(batch)
        pids, labels = batch["puzzle_ids"].to(self.device), batch["labels"].to(self.device)
        return self.head_step(vision, text, pids, labels)

    @torch.inference_mode()
    def head_predict(self, vision: torch.Tensor, text: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        """Predicted answer values [B, K]: argmax of each puzzle's output (sequence puzzles: per step)."""
        self.head.eval()
        logits = port_lib.padded_logits(self.head_fn(vision, text, pids), pids, self.cfg)
        return logits.argmax(-1)

    def predict(self, batch: dict[str, Any]) -> torch.Tensor:
        """Inference from the loader's batch: preprocess, towers, head, argmax."""
        vision, text = self.features(batch)
        return self.head_predict(vision, text, batch["puzzle_ids"].to(self.device))


def evaluate_rows(design: ReferenceDesign, rows: Sequence[smart101.Row], num_classes, batch: int) -> dict:
    """Metrics of the current head on ``rows``, towers recomputed (the reference validates this way)."""
    loader = torch.utils.data.DataLoader(ReferenceItems(rows), batch_size=batch, collate_fn=collate)
    preds = np.concatenate([design.predict(b).cpu().numpy() for b in loader])
    return metrics.compute_metrics(
        preds,
        np.asarray([r.label for r in rows], np.int32),
        np.asarray([r.puzzle_id for r in rows], np.int32),
        np.asarray([r.option_values for r in rows], np.int32),
        np.asarray([r.answer_index for r in rows], np.int32),
        num_classes,
    )


def whole_run(
    tower_dirs: dict[str, str],
    head_cfg: ml_collections.ConfigDict,
    optim_cfg: ml_collections.ConfigDict,
    splits: dict[str, list[smart101.Row]],
    num_classes: dict[int, int],
    *,
    batch: int,
    epochs: int,
    dtype: str = "float32",
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    """The reference's run: load, train ``epochs`` (towers every step), validate every epoch with the
    towers again, save the best head, test it. Returns the test metrics and the best epoch."""
    steps_per_epoch = math.ceil(len(splits["train"]) / batch)
    design = ReferenceDesign(
        tower_dirs, head_cfg, optim_cfg, epochs * steps_per_epoch, dtype=dtype, device=device, seed=seed
    )
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        ReferenceItems(splits["train"]),
        batch_size=batch,
        shuffle=True,
        collate_fn=collate,
        generator=generator,
    )
    best, best_state, best_epoch = -1.0, None, 0
    with tempfile.TemporaryDirectory() as tmp:
        for epoch in range(1, epochs + 1):
            for b in loader:
                design.train_step(b)
            val = evaluate_rows(design, splits["val"], num_classes, batch)
            if val["S_acc"] > best:
                best, best_epoch = val["S_acc"], epoch
                best_state = copy.deepcopy(design.head.state_dict())
                torch.save({"net": best_state, "acc": best, "epoch": epoch}, os.path.join(tmp, "ckpt.pth"))
        design.head.load_state_dict(best_state)
        test = evaluate_rows(design, splits["test"], num_classes, batch)
    return {"test_S_acc": float(test["S_acc"]), "best_epoch": best_epoch}
