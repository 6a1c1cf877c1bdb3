"""Fixed-length blocks from tokenized documents: packed streams for ELECTRA/MLM, segment pairs for ALBERT's SOP.

Packing (ELECTRA): documents are concatenated with [SEP] between them and cut into ``[CLS] body [SEP]`` blocks of
exactly ``seq_len`` tokens, so no compute is spent on padding; only the stream's very last block is padded.

Sentence-order pairs (ALBERT): each document is cut, at word starts, into pieces of up to ``seq_len - 3`` tokens; each
piece is split into two consecutive segments A, B (preferably after a sentence end) and becomes
``[CLS] A [SEP] B [SEP]`` with token types 0/1, or ``[CLS] B [SEP] A [SEP]`` with label 1 at probability ``sop_prob``.
Both segments come from one document, so a document's last piece is padded: that is inherent to SOP.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from peer.data.tokenize import SpecialTokens, TokenizedDoc


@dataclass
class Block:
    """One training sequence; all arrays have length ``seq_len``."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    special_tokens_mask: np.ndarray
    word_start: np.ndarray
    sentence_order_label: int | None = None


def _block(ids: np.ndarray, word_start: np.ndarray, types: np.ndarray, special: SpecialTokens, seq_len: int) -> Block:
    """Pads one sequence to ``seq_len`` and derives its masks (the hot path: plain array ops, no ``np.pad``)."""
    n = len(ids)
    input_ids = np.full(seq_len, special.pad, dtype=np.int64)
    input_ids[:n] = ids
    special_mask = (input_ids == special.cls) | (input_ids == special.sep) | (input_ids == special.pad)
    attention = np.zeros(seq_len, dtype=np.int64)
    attention[:n] = 1
    token_types = np.zeros(seq_len, dtype=np.int64)
    token_types[:n] = types
    starts = np.zeros(seq_len, dtype=np.int64)
    starts[:n] = word_start
    starts[special_mask] = 0
    return Block(
        input_ids=input_ids,
        attention_mask=attention,
        token_type_ids=token_types,
        special_tokens_mask=special_mask.astype(np.int64),
        word_start=starts,
    )


def pack_documents(docs: Iterable[TokenizedDoc], seq_len: int, special: SpecialTokens) -> Iterator[Block]:
    """Packs a document stream into ``[CLS] ... [SEP]`` blocks of ``seq_len`` tokens, [SEP] between documents."""
    body = seq_len - 2
    sep = np.array([special.sep], dtype=np.int64)
    zero = np.zeros(1, dtype=np.int8)
    cls_ids, cls_ws = np.array([special.cls], dtype=np.int64), zero
    pending_ids = np.zeros(0, dtype=np.int64)
    pending_ws = np.zeros(0, dtype=np.int8)
    for doc in docs:
        if len(pending_ids):
            ids = np.concatenate([pending_ids, sep, doc.ids])
            ws = np.concatenate([pending_ws, zero, doc.word_start])
        else:
            ids, ws = doc.ids, doc.word_start
        full = len(ids) // body
        for k in range(full):
            chunk = slice(k * body, (k + 1) * body)
            yield _block(
                np.concatenate([cls_ids, ids[chunk], sep]),
                np.concatenate([cls_ws, ws[chunk], zero]),
                np.zeros(seq_len, dtype=np.int64),
                special,
                seq_len,
            )
        pending_ids, pending_ws = ids[full * body :], ws[full * body :]
    if len(pending_ids):
        n = len(pending_ids) + 2
        yield _block(
            np.concatenate([cls_ids, pending_ids, sep]),
            np.concatenate([cls_ws, pending_ws, zero]),
            np.zeros(n, dtype=np.int64),
            special,
            seq_len,
        )


def _pieces(doc: TokenizedDoc, max_len: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Consecutive pieces of at most ``max_len`` tokens, cut at word starts (a word longer than ``max_len`` is cut)."""
    start, n = 0, len(doc.ids)
    while start < n:
        end = min(start + max_len, n)
        if end < n and not doc.word_start[end]:
            starts = np.flatnonzero(doc.word_start[start + 1 : end + 1]) + start + 1
            if len(starts):
                end = int(starts[-1])
        yield doc.ids[start:end], doc.word_start[start:end]
        start = end


def _split_point(ids: np.ndarray, word_start: np.ndarray, sentence_ends: np.ndarray, rng: random.Random) -> int | None:
    """Where segment B starts: a word start after a sentence end in the middle half if any, else any word start."""
    candidates = np.flatnonzero(word_start[1:]) + 1
    if not len(candidates):
        return None
    n = len(ids)
    after_sentence = candidates[np.isin(ids[candidates - 1], sentence_ends)]
    middle = after_sentence[(after_sentence >= n // 4) & (after_sentence <= 3 * n // 4)]
    pool = middle if len(middle) else candidates
    return int(pool[rng.randrange(len(pool))])


def sentence_order_pairs(
    docs: Iterable[TokenizedDoc],
    seq_len: int,
    special: SpecialTokens,
    sop_prob: float,
    rng: random.Random,
    sentence_ends: np.ndarray,
) -> Iterator[Block]:
    """SOP blocks from each document (see module doc); pieces of a single word are skipped (no pair to order)."""
    for doc in docs:
        for ids, ws in _pieces(doc, seq_len - 3):
            k = _split_point(ids, ws, sentence_ends, rng)
            if k is None:
                continue
            (a, a_ws), (b, b_ws) = (ids[:k], ws[:k]), (ids[k:], ws[k:])
            swapped = rng.random() < sop_prob
            if swapped:
                (a, a_ws), (b, b_ws) = (b, b_ws), (a, a_ws)
            cls = np.array([special.cls], dtype=np.int64)
            sep = np.array([special.sep], dtype=np.int64)
            zero = np.zeros(1, dtype=np.int8)
            types = np.concatenate([np.zeros(len(a) + 2, dtype=np.int64), np.ones(len(b) + 1, dtype=np.int64)])
            block = _block(
                np.concatenate([cls, a, sep, b, sep]),
                np.concatenate([zero, a_ws, zero, b_ws, zero]),
                types,
                special,
                seq_len,
            )
            block.sentence_order_label = int(swapped)
            yield block
