"""Blocks -> the batch dict the objectives consume (CPU tensors; masking happens later, on the training device)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from peer.data.packing import Block

TENSOR_FIELDS = ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask", "word_start")


def collate(blocks: list[Block], with_sentence_order: bool) -> dict[str, torch.Tensor]:
    batch = {name: torch.from_numpy(np.stack([getattr(b, name) for b in blocks])) for name in TENSOR_FIELDS}
    if with_sentence_order:
        batch["sentence_order_label"] = torch.tensor([b.sentence_order_label for b in blocks], dtype=torch.long)
    return batch


def batched(
    blocks: Iterable[Block], batch_size: int, with_sentence_order: bool, keep_last: bool
) -> Iterator[dict[str, torch.Tensor]]:
    """Groups blocks into batches of ``batch_size``; a final short batch is yielded only if ``keep_last``."""
    pending: list[Block] = []
    for block in blocks:
        pending.append(block)
        if len(pending) == batch_size:
            yield collate(pending, with_sentence_order)
            pending = []
    if pending and keep_last:
        yield collate(pending, with_sentence_order)
