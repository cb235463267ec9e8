"""BERT text tower (bert-base-uncased, bert-base-multilingual-cased, ... from their HF configs) and its
WordPiece tokenizer, for the SMART baseline.

Output of :func:`text_forward`: ``last_hidden_state`` [B, T, D] of ``transformers.BertModel`` called with
``attention_mask = ids != pad_token_id``: the mask is derived from the ids, so padded batches need no extra
input (a real token never has the pad id) and every valid position equals the unpadded sentence's states.

:class:`WordPieceTokenizer` gives the ids of ``transformers.BertTokenizer(vocab.txt)(texts,
padding="max_length", max_length=L, truncation=True)`` without transformers: basic tokenisation (clean,
CJK split, lower-case and accent stripping when ``do_lower_case``, punctuation split) then greedy
longest-match WordPiece, ``[CLS] ... [SEP]``, padded with ``[PAD]``. ``L`` defaults to 110, the SMART
baseline's maximum question length.
"""

from __future__ import annotations

import dataclasses
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from smartvlm_jax.towers import vit
from smartvlm_jax.towers.params import ParamSpec, Specs, layer_norm_specs, linear_specs

# transformers.BertConfig defaults == bert-base-uncased (multilingual-cased differs in vocab_size: 119547).
DEFAULTS: dict[str, Any] = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "initializer_range": 0.02,
}
MAX_QLEN = 110  # the SMART baseline keeps at most 110 token states per question
F32 = jnp.float32


def text_param_specs(config: dict[str, Any]) -> Specs:
    """The weight table of a ``BertModel`` with its pooler (HF keys without the ``bert.`` prefix)."""
    d, hidden = config["hidden_size"], config["intermediate_size"]
    specs: Specs = {
        "embeddings.word_embeddings.embedding": ParamSpec(
            (config["vocab_size"], d), "embeddings.word_embeddings.weight"
        ),
        "embeddings.position_embeddings.embedding": ParamSpec(
            (config["max_position_embeddings"], d), "embeddings.position_embeddings.weight"
        ),
        "embeddings.token_type_embeddings.embedding": ParamSpec(
            (config["type_vocab_size"], d), "embeddings.token_type_embeddings.weight"
        ),
    }
    specs.update(layer_norm_specs("embeddings.LayerNorm", "embeddings.LayerNorm", d))
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        for name in ("query", "key", "value"):
            specs.update(linear_specs(f"{p}.attention.self.{name}", f"{p}.attention.self.{name}", d, d))
        specs.update(linear_specs(f"{p}.attention.output.dense", f"{p}.attention.output.dense", d, d))
        norm = f"{p}.attention.output.LayerNorm"
        specs.update(layer_norm_specs(norm, norm, d))
        specs.update(linear_specs(f"{p}.intermediate.dense", f"{p}.intermediate.dense", d, hidden))
        specs.update(linear_specs(f"{p}.output.dense", f"{p}.output.dense", hidden, d))
        specs.update(layer_norm_specs(f"{p}.output.LayerNorm", f"{p}.output.LayerNorm", d))
    specs.update(linear_specs("pooler.dense", "pooler.dense", d, d))
    return specs


def attention_mask(ids: jax.Array, config: dict[str, Any]) -> jax.Array:
    """bool [B, T]: True at real tokens (ids other than the config's ``pad_token_id``)."""
    return ids != int(config.get("pad_token_id") or 0)


def _self_attention(p: dict[str, Any], x: jax.Array, mask: jax.Array, heads: int, dtype: Any) -> jax.Array:
    b, t, d = x.shape
    hd = d // heads
    split = lambda a: a.reshape(b, t, heads, hd)
    q = split(vit.linear(p["query"], x) * (hd**-0.5))
    k, v = split(vit.linear(p["key"], x)), split(vit.linear(p["value"], x))
    s = jnp.einsum("bqhd,bkhd->bhqk", q.astype(dtype), k.astype(dtype), preferred_element_type=F32)
    # Padded keys get the most negative float, as transformers' extended attention mask does.
    s = jnp.where(mask[:, None, None, :], s, jnp.finfo(F32).min)
    probs = jax.nn.softmax(s, axis=-1)
    ctx = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(dtype), v.astype(dtype), preferred_element_type=F32)
    return ctx.reshape(b, t, d)


def text_forward(params: dict[str, Any], ids: jax.Array, config: dict[str, Any], dtype: Any) -> jax.Array:
    """Token ids [B, T] -> ``last_hidden_state`` [B, T, D] (float32), post-LN BERT with the pad mask."""
    emb = params["embeddings"]
    t = ids.shape[1]
    pos = emb["position_embeddings"]["embedding"]
    if t > pos.shape[0]:
        raise ValueError(f"sequence length {t} exceeds max_position_embeddings {pos.shape[0]}")
    x = jnp.take(emb["word_embeddings"]["embedding"], ids, axis=0).astype(F32)
    # token_type_ids are all 0 for single sentences (what the tokenizer returns for one question).
    x = x + pos[:t].astype(F32) + emb["token_type_embeddings"]["embedding"][0].astype(F32)
    eps = config["layer_norm_eps"]
    x = vit.layer_norm(emb["LayerNorm"], x, eps)
    mask = attention_mask(ids, config)
    act = vit.activation(config["hidden_act"])
    for i in range(config["num_hidden_layers"]):  # unrolled under jit, like the ViT towers
        p = params["encoder"]["layer"][str(i)]
        a = _self_attention(p["attention"]["self"], x, mask, config["num_attention_heads"], dtype)
        a = vit.linear(p["attention"]["output"]["dense"], a)
        x = vit.layer_norm(p["attention"]["output"]["LayerNorm"], x + a, eps)
        h = act(vit.linear(p["intermediate"]["dense"], x))
        h = vit.linear(p["output"]["dense"], h)
        x = vit.layer_norm(p["output"]["LayerNorm"], x + h, eps)
    return x


def text_pooled(params: dict[str, Any], hidden: jax.Array, config: dict[str, Any], dtype: Any) -> jax.Array:
    """BERT's ``pooler_output``: tanh(dense(state of [CLS])) -> [B, D]."""
    del config, dtype
    return jnp.tanh(vit.linear(params["pooler"]["dense"], hidden[:, 0]))


# --- WordPiece tokenizer -------------------------------------------------------------------------------


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    return ch not in "\t\n\r" and unicodedata.category(ch) in ("Cc", "Cf")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    # BERT treats every non-alphanumeric ASCII symbol ($, ^, `, ...) as punctuation, plus Unicode P*.
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


@dataclasses.dataclass
class WordPieceTokenizer:
    """``list[str] -> np.int32 [B, max_length]`` with BertTokenizer's ids; picklable (plain data)."""

    vocab: tuple[str, ...]  # token of each id, in vocab.txt order
    max_length: int = MAX_QLEN
    do_lower_case: bool = True
    tokenize_chinese_chars: bool = True
    strip_accents: bool | None = None  # None: strip when lower-casing (BertTokenizer's rule)
    unk_token: str = "[UNK]"
    cls_token: str = "[CLS]"
    sep_token: str = "[SEP]"
    pad_token: str = "[PAD]"
    mask_token: str = "[MASK]"
    max_input_chars_per_word: int = 100
    _ids: dict[str, int] = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.vocab = tuple(self.vocab)
        self._ids = {tok: i for i, tok in enumerate(self.vocab)}
        missing = [t for t in self.specials if t not in self._ids]
        if missing:
            raise ValueError(f"WordPiece vocabulary lacks the special tokens {missing}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2 (room for [CLS] and [SEP]), got {self.max_length}")

    @property
    def specials(self) -> tuple[str, ...]:
        return (self.unk_token, self.cls_token, self.sep_token, self.pad_token, self.mask_token)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs: Any) -> WordPieceTokenizer:
        """Reads a ``vocab.txt`` (one token per line; the line number is the id)."""
        with open(path, encoding="utf-8") as f:
            vocab = [line.rstrip("\n").rstrip("\r") for line in f]
        while vocab and vocab[-1] == "":
            vocab.pop()  # a trailing newline at the end of the file is not a token
        try:
            return cls(tuple(vocab), **kwargs)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e

    def vocab_text(self) -> str:
        """The ``vocab.txt`` contents this tokenizer was built from."""
        return "".join(tok + "\n" for tok in self.vocab)

    def _basic(self, text: str) -> list[str]:
        chars = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if self.tokenize_chinese_chars and _is_cjk(cp):
                chars.append(f" {ch} ")
            else:
                chars.append(" " if _is_whitespace(ch) else ch)
        strip = self.do_lower_case if self.strip_accents is None else self.strip_accents
        words = []
        for word in "".join(chars).split():
            if self.do_lower_case:
                word = word.lower()
            if strip:
                nfd = unicodedata.normalize("NFD", word)
                word = "".join(c for c in nfd if unicodedata.category(c) != "Mn")
            current = ""
            for ch in word:
                if _is_punctuation(ch):
                    words.extend([current, ch] if current else [ch])
                    current = ""
                else:
                    current += ch
            if current:
                words.append(current)
        return words

    def _wordpiece(self, word: str) -> list[str]:
        if len(word) > self.max_input_chars_per_word:
            return [self.unk_token]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self._ids:
                    break
                end -= 1
            if end == start:  # no prefix of the rest is in the vocabulary: the whole word is unknown
                return [self.unk_token]
            pieces.append(piece)
            start = end
        return pieces

    def pieces(self, text: str) -> list[str]:
        """The WordPiece tokens of one text, without [CLS]/[SEP].

        Special tokens written in the text ("[MASK]") are matched first, anywhere, and kept whole, as
        transformers' added tokens are; the text between them is tokenised as usual.
        """
        pattern = "(" + "|".join(re.escape(s) for s in sorted(self.specials, key=len, reverse=True)) + ")"
        out: list[str] = []
        for chunk in re.split(pattern, text):
            if chunk in self.specials:
                out.append(chunk)
            elif chunk:
                out.extend(p for w in self._basic(chunk) for p in self._wordpiece(w))
        return out

    def encode(self, text: str) -> list[int]:
        """``[CLS] pieces [SEP]`` ids of one text, truncated to ``max_length`` (unpadded)."""
        body = [self._ids[p] for p in self.pieces(text)][: self.max_length - 2]
        return [self._ids[self.cls_token], *body, self._ids[self.sep_token]]

    def __call__(self, texts: Sequence[str] | Iterable[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("pass a list of strings, not a single string")
        rows = [self.encode(t) for t in texts]
        out = np.full((len(rows), self.max_length), self._ids[self.pad_token], np.int32)
        for i, ids in enumerate(rows):
            out[i, : len(ids)] = ids
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_ids"] = {}  # rebuilt from the vocabulary on unpickling
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._ids = {tok: i for i, tok in enumerate(self.vocab)}

    def settings(self) -> dict[str, Any]:
        """The constructor arguments besides the vocabulary (stored next to ``vocab.txt``)."""
        fields = [f.name for f in dataclasses.fields(self) if f.init and f.name != "vocab"]
        return {name: getattr(self, name) for name in fields}


def write_vocab(sentences: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 500) -> str:
    """Writes a whole-word ``vocab.txt`` for ``sentences`` (tiny random BERT towers) -> its path.

    ``[PAD]`` is id 0 (BERT's ``pad_token_id``), then the other specials, then the words of the basic
    tokenisation :class:`WordPieceTokenizer` applies, most frequent first (ties alphabetical), up to
    ``vocab_size`` entries; words left out become ``[UNK]``. The analogue of ``train_sentencepiece`` for
    smoke runs and tests, which have no pretrained vocabulary.
    """
    specials = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    if vocab_size <= len(specials):
        raise ValueError(f"vocab_size must exceed the {len(specials)} special tokens, got {vocab_size}")
    basic = WordPieceTokenizer(specials)
    counts: dict[str, int] = {}
    for sentence in sentences:
        for word in basic._basic(sentence):
            counts[word] = counts.get(word, 0) + 1
    words = sorted((w for w in counts if w not in specials), key=lambda w: (-counts[w], w))
    path = os.path.join(os.fspath(out_dir), "vocab.txt")
    os.makedirs(os.fspath(out_dir), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(t + "\n" for t in (*specials, *words)[:vocab_size]))
    return path


# Keys of BertForPreTraining / BertForMaskedLM checkpoints (bert-base-uncased's) outside the encoder.
PRETRAINING_HEAD_KEYS = (
    "cls.predictions.bias",
    "cls.predictions.decoder.weight",
    "cls.predictions.decoder.bias",
    "cls.predictions.transform.dense.weight",
    "cls.predictions.transform.dense.bias",
    "cls.predictions.transform.LayerNorm.weight",
    "cls.predictions.transform.LayerNorm.bias",
    "cls.predictions.transform.LayerNorm.gamma",
    "cls.predictions.transform.LayerNorm.beta",
    "cls.seq_relationship.weight",
    "cls.seq_relationship.bias",
)
