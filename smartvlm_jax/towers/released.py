"""The released configurations of the towers this project supports, by Hugging Face repository id: what a
compile-only run builds when no tower directory is at hand, and what tests and benchmarks make base-size
random towers from. Only values that differ from the transformers defaults are spelled out.
"""

from typing import Any

# A compile-only run's config.towers.<name> may name one instead of a directory.
RELEASED: dict[str, dict[str, Any]] = {
    "facebook/dinov2-base": {
        "model_type": "dinov2",
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "patch_size": 14,
        "image_size": 518,
        "layerscale_value": 1.0,
        "mlp_ratio": 4,
    },
    "facebook/dinov2-large": {
        "model_type": "dinov2",
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "patch_size": 14,
        "image_size": 518,
        "layerscale_value": 1.0,
        "mlp_ratio": 4,
    },
    "google/siglip-base-patch16-224": {"model_type": "siglip", "vision_config": {}, "text_config": {}},
    "google/siglip-so400m-patch14-384": {
        "model_type": "siglip",
        "vision_config": {
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "patch_size": 14,
            "image_size": 384,
        },
        "text_config": {
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "vocab_size": 32000,
            "max_position_embeddings": 64,
        },
    },
    "microsoft/resnet-50": {"model_type": "resnet"},
    "bert-base-uncased": {"model_type": "bert"},
}
