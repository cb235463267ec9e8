"""The feature variants: which frozen towers feed which head, in one table every stage reads.

A variant is the value of ``config.model.variant`` (and of a saved head's ``variant``). It fixes the
vision towers whose mean-pooled features are concatenated (in this order), the text tower and what it
gives the head, the head that takes those features, and the widths of the base towers' features:

=========  ================  ======  ===========  ========  ==========  ========
variant    vision towers     text    text output  head      vision dim  text dim
=========  ================  ======  ===========  ========  ==========  ========
fused      dinov2 + siglip   siglip  mean         smarter   1536        768
dinov2     dinov2            siglip  mean         smarter   768         768
siglip     siglip            siglip  mean         smarter   768         768
resnet     resnet            bert    tokens       baseline  2048        768
=========  ================  ======  ===========  ========  ==========  ========

Text output "mean" is the mean over all positions of ``last_hidden_state``, padding included, [B, D]
(SPEC section 4); "tokens" is the token states [B, L, D], zero beyond the question (SPEC section 5,
"Baseline"). The tower names are the ``config.towers.<name>`` fields and the tower registry's kinds.

This module imports nothing of the package: configs, the head, features, training and inference all
read it, so it stays at the bottom of the import graph.
"""

from __future__ import annotations

import dataclasses

TEXT_OUTPUTS = ("mean", "tokens")
HEADS = ("smarter", "baseline")  # the SMARTER head (reasoner/model.py) and SMART's (reasoner/baseline.py)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of the variant table (see the module docstring)."""

    name: str
    vision: tuple[str, ...]  # vision towers, in concatenation order
    text: str  # the text tower
    text_output: str  # "mean" ([B, D]) or "tokens" ([B, L, D])
    head: str  # the head these features feed
    vision_dim: int  # width of the concatenated pooled vision features of the base towers
    text_dim: int  # width of the base text tower's features

    @property
    def towers(self) -> tuple[str, ...]:
        """Every tower the variant loads: its vision towers, then the text tower if not among them."""
        return self.vision if self.text in self.vision else (*self.vision, self.text)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("fused", ("dinov2", "siglip"), "siglip", "mean", "smarter", 1536, 768),
        Variant("dinov2", ("dinov2",), "siglip", "mean", "smarter", 768, 768),
        Variant("siglip", ("siglip",), "siglip", "mean", "smarter", 768, 768),
        Variant("resnet", ("resnet",), "bert", "tokens", "baseline", 2048, 768),
    )
}


# Back-compat, and only that: head-config fields renamed since some model dirs and run configs were written
# (old name -> new name; reasoner.config.upgrade reads old files, the CLI names the new flag).
RENAMED_FIELDS = {"features": "variant"}


def get(name: str, field: str = "variant") -> Variant:
    """The variant called ``name``; ``ValueError`` naming ``field`` and the known variants otherwise.

    ``field`` names the value as the caller knows it: the head config's ``variant`` by default, from
    Python; the command-line layer passes its flag (``--config.model.variant``)."""
    if name not in VARIANTS:
        raise ValueError(f"{field}={name!r} is not one of {sorted(VARIANTS)}")
    return VARIANTS[name]


def for_head(head: str) -> list[str]:
    """Names of the variants that feed ``head``, sorted."""
    return sorted(v.name for v in VARIANTS.values() if v.head == head)


def check(name: str, head: str | None = None, fields: tuple[str, str] = ("variant", "head")) -> Variant:
    """The variant, checked against the head it will feed; ``ValueError`` naming both ``fields`` (the head
    config's names from Python; the command line passes its flags).

    The SMARTER head takes pooled text [B, D], the baseline head token states [B, L, D]: a mismatch would
    otherwise surface as a shape error deep inside the first step.
    """
    variant = get(name, fields[0])
    if head is not None and head not in HEADS:
        raise ValueError(f"{fields[1]}={head!r} is not one of {list(HEADS)}")
    if head is not None and head != variant.head:
        raise ValueError(
            f"{fields[0]}={name!r} feeds the {variant.head!r} head, but {fields[1]}="
            f"{head!r} (variants for that head: {for_head(head)})"
        )
    return variant
