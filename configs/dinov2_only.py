"""Ablation: DINOv2-base features alone (768-d); SigLIP still encodes the question.

  python -m smartvlm_jax.main --config configs/dinov2_only.py --workdir workdirs/dinov2_only \
    --config.data.root=SMART101-Data --config.towers.dinov2=DINOV2_DIR --config.towers.siglip=SIGLIP_DIR
"""

from configs import smarter


def get_config():
    c = smarter.get_config()
    c.model.variant = "dinov2"
    return c
