"""SigLIP tokenisation without transformers: the same ids as ``SiglipTokenizer`` on the same spiece.model.

It follows transformers' algorithm step by step: split out special tokens (stripping the whitespace beside
them), canonicalise each piece of text (lower-case, drop ASCII punctuation, collapse whitespace), encode it
with sentencepiece behind an ``<unk>`` prefix that is then cut off (so no dummy-prefix surprises), append
``</s>`` unless already there, truncate/pad to ``max_length`` with the pad id.
"""

from __future__ import annotations

import dataclasses
import os
import re
import string
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import sentencepiece as spm

SPIECE_UNDERLINE = "\u2581"
_PUNCTUATION = str.maketrans("", "", string.punctuation)


@dataclasses.dataclass
class SiglipTextTokenizer:
    """``list[str] -> np.int32 [B, max_length]``; picklable (holds the model bytes, reloads lazily)."""

    model_proto: bytes
    max_length: int = 64
    eos_token: str = "</s>"
    unk_token: str = "<unk>"
    pad_token: str = "</s>"
    do_lower_case: bool = True
    _sp: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs: Any) -> SiglipTextTokenizer:
        """Reads a sentencepiece ``spiece.model``."""
        with open(path, "rb") as f:
            return cls(f.read(), **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_sp"] = None  # the C++ processor is rebuilt from the bytes in the worker
        return state

    @property
    def sp(self) -> spm.SentencePieceProcessor:
        """The sentencepiece processor, built on first use."""
        if self._sp is None:
            sp = spm.SentencePieceProcessor()
            sp.LoadFromSerializedProto(self.model_proto)
            self._sp = sp
        return self._sp

    def _specials(self) -> list[str]:
        return sorted({self.eos_token, self.unk_token, self.pad_token}, key=len, reverse=True)

    def _canonicalize(self, text: str) -> str:
        if self.do_lower_case:
            text = text.lower()
        text = text.translate(_PUNCTUATION)
        return re.sub(r"\s+", " ", text).strip()

    def _encode_text(self, text: str) -> list[str]:
        text = self._canonicalize(text)
        pieces = self.sp.encode(self.unk_token + text, out_type=str)
        n = len(self.sp.encode(self.unk_token, out_type=str))
        return pieces[n:] if len(pieces) >= n else pieces

    def pieces(self, text: str) -> list[str]:
        """The token strings of one text, before ids, eos and padding."""
        specials = self._specials()
        chunks = re.split("(" + "|".join(re.escape(s) for s in specials) + ")", SPIECE_UNDERLINE + text)
        # Special tokens strip the whitespace on both sides of them (AddedToken lstrip/rstrip).
        for i, chunk in enumerate(chunks):
            if chunk in specials:
                if i > 0:
                    chunks[i - 1] = chunks[i - 1].rstrip()
                if i + 1 < len(chunks):
                    chunks[i + 1] = chunks[i + 1].lstrip()
        out: list[str] = []
        for chunk in chunks:
            if not chunk:
                continue
            out.extend([chunk] if chunk in specials else self._encode_text(chunk))
        if len(out) > 1 and out[0] == SPIECE_UNDERLINE and out[1] in specials:
            out = out[1:]
        return out

    def encode(self, text: str) -> list[int]:
        """Ids of one text: pieces, truncated to leave room for ``</s>``, then ``</s>`` (unpadded)."""
        ids = [self.sp.piece_to_id(p) for p in self.pieces(text)]
        ids = ids[: self.max_length - 1]
        eos = self.sp.piece_to_id(self.eos_token)
        if not ids or ids[-1] != eos:
            ids.append(eos)
        return ids

    def __call__(self, texts: Sequence[str] | Iterable[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("pass a list of strings, not a single string")
        pad = self.sp.piece_to_id(self.pad_token)
        rows = [self.encode(t) for t in texts]
        out = np.full((len(rows), self.max_length), pad, np.int32)
        for i, ids in enumerate(rows):
            out[i, : len(ids)] = ids
        return out


def train_sentencepiece(sentences: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 500) -> str:
    """Trains a small BPE sentencepiece model (pad 0, eos 1, unk 2, no bos) -> path of ``spiece.model``.

    For tests and the smoke run, where the real SigLIP vocabulary cannot be downloaded. The layout of the
    special ids follows the released SigLIP model so a ``SiglipTokenizer`` wraps it unchanged.
    """
    os.makedirs(out_dir, exist_ok=True)
    prefix = os.path.join(os.fspath(out_dir), "spiece")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(sentences)),
        model_prefix=prefix,
        model_type="bpe",
        vocab_size=vocab_size,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return prefix + ".model"
