"""Ablation: no QF layer; the question goes through q_MLP and the composite LayerNorm sees [im, q'] (2R).

  python -m smartvlm_jax.main --config configs/no_qf.py --workdir workdirs/no_qf \
    --config.data.root=SMART101-Data --config.towers.dinov2=DINOV2_DIR --config.towers.siglip=SIGLIP_DIR
"""

from configs import smarter


def get_config():
    c = smarter.get_config()
    c.model.use_qf = False
    return c
