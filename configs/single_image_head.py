"""Ablation: one image encoder shared by all puzzles instead of one per puzzle.

  python -m smartvlm_jax.main --config configs/single_image_head.py --workdir workdirs/single_image_head \
    --config.data.root=SMART101-Data --config.towers.dinov2=DINOV2_DIR --config.towers.siglip=SIGLIP_DIR
"""

from configs import smarter


def get_config():
    c = smarter.get_config()
    c.model.use_single_image_head = True
    return c
