"""Tiny hand-built batches per the Batch contract (what ``peer.data`` produces), and tiny models."""

import pytest
import torch

from peer.config import ModelSpec, RunConfig

VOCAB = 300
CLS, SEP, MASK = 101, 102, 103


def make_batch(bsz: int, seq_len: int, seed: int = 0, pad_rows: int = 1, sep_at: int | None = None) -> dict:
    """Random words in [200, VOCAB), [CLS] first, [SEP] last real token, the first ``pad_rows`` rows half padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(200, VOCAB, (bsz, seq_len), generator=g)
    attn = torch.ones(bsz, seq_len, dtype=torch.long)
    ids[:, 0] = CLS
    ids[:, -1] = SEP
    if sep_at is not None:
        ids[:, sep_at] = SEP
    for r in range(pad_rows):
        ids[r, seq_len // 2 :] = 0
        attn[r, seq_len // 2 :] = 0
        ids[r, seq_len // 2 - 1] = SEP
    special = ((ids == CLS) | (ids == SEP) | (attn == 0)).long()
    # A token right after a special one always starts a word, as a tokenizer's word boundaries guarantee.
    word_start = (torch.rand(bsz, seq_len, generator=g) < 0.6).long() | special | special.roll(1, dims=1)
    types = torch.zeros(bsz, seq_len, dtype=torch.long)
    if sep_at is not None:
        types[:, sep_at + 1 :] = attn[:, sep_at + 1 :]
    return {
        "input_ids": ids,
        "attention_mask": attn,
        "token_type_ids": types,
        "special_tokens_mask": special,
        "word_start": word_start,
        "sentence_order_label": torch.randint(2, (bsz,), generator=g),
    }


def tiny_config(arch: str = "electra") -> RunConfig:
    cfg = RunConfig()
    cfg.model = ModelSpec(
        architecture=arch, hidden_size=32, num_layers=2, num_heads=4, ffn_size=64, max_position_embeddings=64
    )
    cfg.model.embedding_size = 16 if arch == "albert" else None
    cfg.objective.name = arch
    return cfg


@pytest.fixture
def batch():
    return make_batch(4, 24)
