"""The two entry points the trainer and the swarm call: an endless shuffled training stream and a fixed held-out set.

Recipe, per epoch: open the source (streaming) -> keep the train (or held-out) side of the per-document hash split ->
shuffle documents (``datasets``' shard order + buffer, seeded per peer and epoch) -> tokenize -> pack (ELECTRA) or
build SOP pairs (ALBERT) -> shuffle blocks in a bounded buffer -> batch. Memory is bounded by the two buffers,
whatever the corpus size. Same ``(spec, shuffle_seed)`` -> the same batches; a different ``shuffle_seed`` -> another
order of the same training data.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterator

import numpy as np
import torch

from peer.config import DataSpec
from peer.data.batching import batched
from peer.data.packing import Block, pack_documents, sentence_order_pairs
from peer.data.shuffle import buffer_shuffle, derive_seed
from peer.data.sources import describe_source, iter_texts, open_source
from peer.data.split import is_heldout
from peer.data.tokenize import SpecialTokens, tokenize_documents
from peer.errors import UserError

logger = logging.getLogger(__name__)

OBJECTIVES = ("electra", "albert")
DOC_SHUFFLE_BUFFER = 1000
BLOCK_SHUFFLE_BUFFER = 2048
MIN_SEQ_LEN = 8
# Tokens after which segment B preferably starts (sentence ends), for SOP pairs.
SENTENCE_END_TOKENS = (".", "!", "?")


def check_seq_len(spec: DataSpec, max_positions: int) -> None:
    """Refuses a sequence length the model cannot embed (or too short to hold a pair), before any data is read."""
    if spec.seq_len > max_positions:
        raise UserError(f"data.seq_len {spec.seq_len} exceeds the model's {max_positions} position embeddings")
    if spec.seq_len < MIN_SEQ_LEN:
        raise UserError(f"data.seq_len {spec.seq_len} is too short; use at least {MIN_SEQ_LEN}")


def _check_args(spec: DataSpec, batch_size: int, objective_name: str) -> None:
    if objective_name not in OBJECTIVES:
        raise UserError(f"unknown objective {objective_name!r} (known: {', '.join(OBJECTIVES)})")
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    if not 0.0 < spec.heldout_fraction < 1.0:
        raise UserError(f"data.heldout_fraction must be in (0, 1), got {spec.heldout_fraction}")
    if spec.seq_len < MIN_SEQ_LEN:
        raise UserError(f"data.seq_len {spec.seq_len} is too short; use at least {MIN_SEQ_LEN}")


def _sentence_end_ids(tokenizer) -> np.ndarray:
    ids = tokenizer.convert_tokens_to_ids(list(SENTENCE_END_TOKENS))
    return np.asarray([i for i in ids if i is not None and i != tokenizer.unk_token_id], dtype=np.int64)


def iter_documents(spec: DataSpec, heldout: bool) -> Iterator[str]:
    """The run's documents in corpus order, of one side of the held-out split: raw text for a task built on the
    corpus (e.g. ``bench/seq2seq_warm_start.py``), split exactly as the training and held-out batches are."""
    return _documents(spec, heldout, shuffle_seed=None, epoch=0)


def _documents(spec: DataSpec, heldout: bool, shuffle_seed: int | None, epoch: int) -> Iterator[str]:
    ds, column = open_source(spec)
    if shuffle_seed is not None:
        ds = ds.shuffle(seed=derive_seed(spec.seed, shuffle_seed, "documents") % 2**32, buffer_size=DOC_SHUFFLE_BUFFER)
        ds.set_epoch(epoch)
    for text in iter_texts(spec, ds, column):
        if is_heldout(text, spec.heldout_fraction) == heldout:
            yield text


def _blocks(spec: DataSpec, tokenizer, objective_name: str, docs: Iterator[str], sop_seed: int, sop_prob: float):
    special = SpecialTokens.of(tokenizer)
    tokenized = tokenize_documents(docs, tokenizer)
    if objective_name == "albert":
        rng = random.Random(sop_seed)
        return sentence_order_pairs(tokenized, spec.seq_len, special, sop_prob, rng, _sentence_end_ids(tokenizer))
    return pack_documents(tokenized, spec.seq_len, special)


def build_train_batches(
    spec: DataSpec,
    tokenizer,
    batch_size: int,
    objective_name: str,
    shuffle_seed: int,
    sop_prob: float = 0.5,
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless iterator of full training batches (held-out documents excluded), epoch after epoch, each epoch in a new
    order derived from ``(spec.seed, shuffle_seed, epoch)``. A missing or unreadable source fails here; an empty one,
    or one without the text column, at the first ``next``. ``sop_prob`` is ``ObjectiveSpec.sop_prob`` (ALBERT only).
    Wrap in ``peer.data.prefetch`` to tokenize in the background while the model steps."""
    _check_args(spec, batch_size, objective_name)
    SpecialTokens.of(tokenizer)
    open_source(spec)  # fail now, on bad input, rather than inside the caller's training loop
    return _endless(spec, tokenizer, batch_size, objective_name, shuffle_seed, sop_prob)


def _endless(spec, tokenizer, batch_size, objective_name, shuffle_seed, sop_prob) -> Iterator[dict[str, torch.Tensor]]:
    for epoch in itertools.count():
        docs = _documents(spec, heldout=False, shuffle_seed=shuffle_seed, epoch=epoch)
        blocks = _blocks(
            spec, tokenizer, objective_name, docs, derive_seed(spec.seed, shuffle_seed, epoch, "sop"), sop_prob
        )
        shuffled = buffer_shuffle(blocks, BLOCK_SHUFFLE_BUFFER, derive_seed(spec.seed, shuffle_seed, epoch, "blocks"))
        produced = 0
        for batch in batched(
            _drop_last_padded(shuffled, objective_name), batch_size, objective_name == "albert", False
        ):
            produced += 1
            yield batch
        if produced == 0:
            raise UserError(
                f"{describe_source(spec)} yields no training batch of {batch_size}×{spec.seq_len} tokens "
                "(empty corpus, or too small for this batch size)"
            )
        logger.info("data epoch %d done: %d batches", epoch, produced)


def _drop_last_padded(blocks: Iterator[Block], objective_name: str) -> Iterator[Block]:
    """Training never sees the packed stream's one padded tail block (it would recur every epoch); SOP keeps its own."""
    if objective_name == "albert":
        yield from blocks
        return
    for block in blocks:
        if block.attention_mask[-1]:
            yield block


def build_heldout_batches(
    spec: DataSpec,
    tokenizer,
    batch_size: int,
    objective_name: str,
    max_batches: int,
    sop_prob: float = 0.5,
) -> list[dict[str, torch.Tensor]]:
    """Up to ``max_batches`` batches from the held-out documents, in corpus order: the same list every time."""
    _check_args(spec, batch_size, objective_name)
    docs = _documents(spec, heldout=True, shuffle_seed=None, epoch=0)
    blocks = _blocks(spec, tokenizer, objective_name, docs, derive_seed(spec.seed, "heldout", "sop"), sop_prob)
    batches = list(itertools.islice(batched(blocks, batch_size, objective_name == "albert", True), max_batches))
    if not batches:
        raise UserError(
            f"{describe_source(spec)} has no held-out documents at data.heldout_fraction={spec.heldout_fraction}"
        )
    return batches
