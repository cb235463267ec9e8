"""The trainable heads: config, Flax modules, loss, predictions and model dirs.

    cfg = reasoner.default_config(); cfg.puzzle_ids = [...]; cfg.num_classes = [...]
    model = reasoner.build(cfg)
    logits = model.apply(variables, vision, text, puzzle_ids, train=False)   # [B, K, C_max]

The names below load their module on first use (PEP 562), so importing ``smartvlm_jax.reasoner.config``
(what every ``configs/*.py`` does) loads neither Flax modules nor Orbax.
"""

import importlib

_EXPORTS = {
    "MASKED_LOGIT": "config",
    "baseline_config": "config",
    "default_config": "config",
    "validate": "config",
    "SmarterHead": "model",
    "build": "model",
    "loss": "losses",
    "predictions": "losses",
    "load": "checkpoint",
    "param_summary": "checkpoint",
    "save": "checkpoint",
    "row_presence": "presence",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    try:  # a submodule (``reasoner.checkpoint``) that was not imported yet
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
