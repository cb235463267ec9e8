"""Ablation: SigLIP-base vision features alone (768-d), SigLIP text for the question.

  python -m smartvlm_jax.main --config configs/siglip_only.py --workdir workdirs/siglip_only \
    --config.data.root=SMART101-Data --config.towers.siglip=SIGLIP_DIR
"""

from configs import smarter


def get_config():
    c = smarter.get_config()
    c.model.variant = "siglip"
    return c
