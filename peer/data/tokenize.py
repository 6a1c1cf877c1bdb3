"""Tokenization of documents with the source model's fast tokenizer, keeping where each whole word starts.

``word_start`` comes from the fast tokenizer's word ids (its pre-tokenizer's words), which is what ALBERT-style
whole-word n-gram masking needs; a slow tokenizer has no word ids, so it is refused.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from peer.errors import UserError

# Documents tokenized per call: the Rust tokenizer parallelises within a call, Python overhead is per call.
TOKENIZE_BATCH = 64


@dataclass(frozen=True)
class SpecialTokens:
    cls: int
    sep: int
    pad: int

    @classmethod
    def of(cls, tokenizer) -> SpecialTokens:
        if not getattr(tokenizer, "is_fast", False):
            raise UserError("the data pipeline needs a fast tokenizer (tokenizer.json); this one is a slow tokenizer")
        ids = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)
        if any(i is None for i in ids):
            raise UserError("the tokenizer has no [CLS]/[SEP]/[PAD] tokens; a BERT-style tokenizer is needed")
        return cls(*ids)


@dataclass
class TokenizedDoc:
    """One document's WordPiece ids (no special tokens) and 1 at the first piece of every word."""

    ids: np.ndarray  # int64 [n]
    word_start: np.ndarray  # int8 [n]


def word_starts(word_ids: list[int | None]) -> np.ndarray:
    """1 where a piece starts a new word: its word id is set and differs from the previous piece's."""
    ids = np.array([-1 if w is None else w for w in word_ids], dtype=np.int64)
    out = np.zeros(len(ids), dtype=np.int8)
    if len(ids):
        out[0] = ids[0] >= 0
        out[1:] = (ids[1:] >= 0) & (ids[1:] != ids[:-1])
    return out


def tokenize_documents(texts: Iterable[str], tokenizer) -> Iterator[TokenizedDoc]:
    """Tokenizes a stream of documents in small batches; empty results (whitespace-only text) are skipped."""
    texts = iter(texts)
    while batch := list(itertools.islice(texts, TOKENIZE_BATCH)):
        enc = tokenizer(batch, add_special_tokens=False, return_attention_mask=False, verbose=False)
        for i, ids in enumerate(enc["input_ids"]):
            if ids:
                yield TokenizedDoc(np.asarray(ids, dtype=np.int64), word_starts(enc.word_ids(i)))
