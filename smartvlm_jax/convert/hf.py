"""``convert hf``: a Hugging Face tower directory -> a converted tower directory.

    python -m smartvlm_jax.convert hf --src HF_DIR --out OUT_DIR [--parts vision,text]

Reading and checking the HF directory is the towers' (:mod:`smartvlm_jax.towers.hf`), writing the converted
format too (:func:`smartvlm_jax.towers.store.write_converted`); this module only puts them together.
"""

from __future__ import annotations

from collections.abc import Sequence

from smartvlm_jax import cli
from smartvlm_jax.towers.hf import read_config, read_part, read_state
from smartvlm_jax.towers.registry import model_type_entry
from smartvlm_jax.towers.store import write_converted


def convert(src: str, out: str, parts: Sequence[str] | None = None) -> str:
    """Converts an HF directory (all its parts, or ``parts``) to the converted format at ``out``."""
    config = read_config(src)
    entry = model_type_entry(str(config.get("model_type")))
    parts = sorted(entry.parts) if not parts else list(parts)
    state = read_state(src)
    flats, processors, tokenizer = {}, {}, None
    for part in parts:
        _, flats[part], processors[part], tok = read_part(src, part, state)
        tokenizer = tok or tokenizer
    if "text" in parts and tokenizer is None:  # the text part could be loaded, but never fed
        raise ValueError(
            f"{src} has a text tower but no tokenizer (SigLIP: spiece.model; BERT: vocab.txt or "
            "tokenizer.json): copy it next to config.json, or convert the vision part only (--parts vision)"
        )
    return write_converted(out, config, flats, processors, tokenizer)


def main(argv: Sequence[str] | None = None) -> int:
    """``convert hf`` entry point; returns the exit status (1 with a message on bad input)."""
    parser = cli.ArgumentParser(
        prog=cli.prog("smartvlm_jax.convert") + " hf", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--src", required=True, help="HF directory (config.json + weights)")
    parser.add_argument("--out", required=True, help="output directory; must not exist or be empty")
    parser.add_argument("--parts", default="", help="comma-separated parts (vision,text); default: all")
    parser.add_argument("--traceback", action="store_true", help=cli.TRACEBACK_HELP)
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    return cli.run(  # RuntimeError: a pytorch_model.bin without torch
        lambda: print(f"wrote {convert(args.src, args.out, parts)}"),
        args.traceback,
        also=(RuntimeError,),
        prefix=f"converting {args.src}: ",
    )
