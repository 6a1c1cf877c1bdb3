"""Choosing which tokens a pretraining objective predicts, and how their inputs are corrupted.

Everything here runs on the training device and draws only from the ``torch.Generator`` it is given, so a run is
reproducible from its seed and a resumed run continues bit for bit once that generator's state is restored. There is
no data-dependent Python control flow and no host sync on the default (static) path, which keeps the step friendly to
``torch.compile`` and CUDA graphs.

Positions are returned as ``MaskedPositions``: an index tensor ``[B, K]`` and a 0/1 weight ``[B, K]``. With static
shapes K is fixed by the sequence length, so the gathered rows (and the vocabulary projection on them) always have
the same shape; rows beyond a sequence's own count carry weight 0 and point at position 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# The [MASK] id of BERT's uncased WordPiece vocabulary (the embedded default tokenizer). Callers that use another
# tokenizer pass ``tokenizer.mask_token_id``.
BERT_MASK_TOKEN_ID = 103


@dataclass
class MaskedPositions:
    """``index[b, k]`` is a position of sequence b to predict when ``weight[b, k]`` is 1 (0 = a static-shape filler)."""

    index: torch.Tensor  # LongTensor [B, K]
    weight: torch.Tensor  # FloatTensor [B, K]

    def as_bool(self, seq_len: int) -> torch.Tensor:
        """The same positions as a bool mask ``[B, L]``."""
        mask = torch.zeros(self.index.shape[0], seq_len, dtype=torch.bool, device=self.index.device)
        return scatter_at(mask, self, torch.ones_like(self.index, dtype=torch.bool))


def scatter_at(target: torch.Tensor, positions: MaskedPositions, values: torch.Tensor) -> torch.Tensor:
    """``target`` with ``values[b, k]`` written at ``positions.index[b, k]`` where the weight is 1 (out of place).

    Filler rows are sent to an extra column that is dropped afterwards, so a filler can never overwrite a real
    position (a plain scatter with duplicate indices writes in an unspecified order)."""
    seq_len = target.shape[1]
    index = torch.where(positions.weight > 0, positions.index, torch.full_like(positions.index, seq_len))
    padded = torch.cat([target, target.new_zeros(target.shape[0], 1)], dim=1)
    return padded.scatter(1, index, values.to(target.dtype))[:, :seq_len]


def gather_rows(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``hidden[b, index[b, k], :]`` as ``[B, K, H]``: the hidden states of the predicted positions only."""
    return hidden.gather(1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))


def candidate_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Tokens that may be masked and count in a loss: real (attention 1) and not special ([CLS]/[SEP]/[PAD])."""
    return batch["attention_mask"].bool() & ~batch["special_tokens_mask"].bool()


def max_predictions(seq_len: int, mask_prob: float) -> int:
    """The static number K of predicted positions per sequence: enough for ``mask_prob`` of a full sequence."""
    return max(1, math.ceil(seq_len * mask_prob))


def num_to_predict(candidates: torch.Tensor, mask_prob: float, k_max: int) -> torch.Tensor:
    """Per sequence: round(mask_prob x candidates), at least 1 where there is a candidate, at most ``k_max``.

    A fixed count per sequence (as google-research/electra does) instead of an independent coin per token keeps the
    loss's denominator steady from batch to batch."""
    n = candidates.sum(dim=1)
    want = torch.round(n.float() * mask_prob).long().clamp(min=1)
    return torch.minimum(torch.minimum(want, n), torch.full_like(n, k_max))


def sample_token_positions(
    candidates: torch.Tensor, mask_prob: float, generator: torch.Generator, static: bool = True
) -> MaskedPositions:
    """Draws ``num_to_predict`` distinct candidate positions per sequence, uniformly without replacement.

    Random scores for candidates, -1 for the rest, top-K: the K best are a uniform sample without replacement among
    candidates. ``static`` fixes K to ``max_predictions(L)``; otherwise K is the batch's largest count (a host sync,
    and a shape that changes between batches)."""
    bsz, seq_len = candidates.shape
    k_static = max_predictions(seq_len, mask_prob)
    counts = num_to_predict(candidates, mask_prob, k_static)
    k = k_static if static else max(1, int(counts.max()))
    scores = torch.rand(bsz, seq_len, generator=generator, device=candidates.device)
    scores = torch.where(candidates, scores, torch.full_like(scores, -1.0))
    index = scores.topk(k, dim=1, sorted=True).indices
    weight = (torch.arange(k, device=candidates.device)[None, :] < counts[:, None]).float()
    index = torch.where(weight > 0, index, torch.zeros_like(index))
    return MaskedPositions(index, weight)


def positions_from_mask(mask: torch.Tensor, k: int | None = None) -> MaskedPositions:
    """Packs a bool mask ``[B, L]`` into ``MaskedPositions`` (positions in ascending order). K defaults to the
    largest row count (a host sync); pass it for static shapes, which must be ≥ every row's count."""
    counts = mask.sum(dim=1)
    if k is None:
        k = max(1, int(counts.max()))
    seq_len = mask.shape[1]
    # Masked positions sort first, in ascending order; the rest after them.
    ar = torch.arange(seq_len, device=mask.device)
    key = torch.where(mask, ar, ar + seq_len)
    index = key.sort(dim=1).values[:, :k] % seq_len
    weight = (torch.arange(k, device=mask.device)[None, :] < counts[:, None]).float()
    index = torch.where(weight > 0, index, torch.zeros_like(index))
    return MaskedPositions(index, weight)


def ngram_length_probs(max_ngram: int) -> torch.Tensor:
    """p(n) ∝ 1/n for n = 1..max_ngram (ALBERT's n-gram masking)."""
    inv = 1.0 / torch.arange(1, max_ngram + 1, dtype=torch.float64)
    return (inv / inv.sum()).float()


def sample_ngram_spans(
    batch: dict[str, torch.Tensor], mask_prob: float, max_ngram: int, generator: torch.Generator
) -> torch.Tensor:
    """ALBERT's whole-word n-gram masking, vectorised: a bool mask ``[B, L]`` over whole words.

    As in google-research/albert: visit word positions in random order, at each draw an n-gram length n with
    p(n) ∝ 1/n, and take the span of n whole words unless that would exceed the budget of round(mask_prob x tokens)
    tokens. Spans never cross a special token (so never a segment boundary). The greedy visit is computed without a
    Python loop: each word gets the smallest visit rank of any span covering it, and the tokens whose rank lies below
    the budget-th smallest rank are exactly those the greedy visit takes before its first span that no longer fits
    (the first overflowing span ends the visit here, where google's loop tries later spans; both stay within budget).
    """
    cand = candidate_mask(batch)
    bsz, seq_len = cand.shape
    device = cand.device
    prev_cand = torch.nn.functional.pad(cand[:, :-1], (1, 0), value=False)
    starts = cand & (batch["word_start"].bool() | ~prev_cand)
    word_id = torch.cumsum(starts.long(), dim=1) - 1  # word index per token (valid where cand)
    num_words = seq_len  # upper bound; static shape
    # A run is a stretch of candidates between special tokens; spans must stay inside one run.
    run_id = torch.cumsum((~cand).long(), dim=1)
    safe_word = torch.where(cand, word_id, torch.full_like(word_id, num_words))  # dump slot for non-candidates
    word_run = torch.full((bsz, num_words + 1), -1, dtype=torch.long, device=device)
    word_run.scatter_(1, safe_word, torch.where(cand, run_id, torch.full_like(run_id, -1)))
    word_run = word_run[:, :num_words]
    word_exists = word_run >= 0

    rank = torch.rand(bsz, num_words, generator=generator, device=device).argsort(dim=1).argsort(dim=1)
    big = 2 * num_words + 1
    rank = torch.where(word_exists, rank, torch.full_like(rank, big))
    probs = ngram_length_probs(max_ngram).to(device)
    lengths = torch.multinomial(probs.expand(bsz * num_words, -1), 1, True, generator=generator).view(bsz, num_words)
    lengths = lengths + 1

    cover_rank = rank.clone()
    for offset in range(1, max_ngram):
        src_rank = torch.nn.functional.pad(rank[:, :-offset], (offset, 0), value=big)
        src_len = torch.nn.functional.pad(lengths[:, :-offset], (offset, 0), value=0)
        src_run = torch.nn.functional.pad(word_run[:, :-offset], (offset, 0), value=-2)
        covers = (src_len > offset) & (src_run == word_run) & word_exists
        cover_rank = torch.where(covers, torch.minimum(cover_rank, src_rank), cover_rank)

    budget = torch.round(cand.sum(dim=1).float() * mask_prob).long().clamp(min=1)
    taken = _take_by_rank(cover_rank, word_id, cand, budget)
    # Second pass, single whole words by fresh rank, fills what the first overflowing span left of the budget.
    rest = cand & ~taken
    left = budget - taken.sum(dim=1)
    taken |= _take_by_rank(rank, word_id, rest, left)
    return taken


def _take_by_rank(word_rank: torch.Tensor, word_id: torch.Tensor, allowed: torch.Tensor, budget: torch.Tensor):
    """Tokens of ``allowed`` whose word rank is below the rank at which the running token count passes ``budget``:
    whole words in rank order, stopping before the first word (group) that would not fit."""
    big = torch.iinfo(torch.long).max
    token_key = torch.gather(word_rank, 1, word_id.clamp(min=0))
    token_key = torch.where(allowed, token_key, torch.full_like(token_key, big))
    sorted_keys = torch.cat([token_key.sort(dim=1).values, torch.full_like(token_key[:, :1], big)], dim=1)
    threshold = sorted_keys.gather(1, budget.clamp(min=0, max=token_key.shape[1])[:, None])
    return allowed & (token_key < threshold)


def mask_inputs(
    input_ids: torch.Tensor,
    positions: MaskedPositions,
    mask_token_id: int,
    generator: torch.Generator,
    mask_frac: float,
    random_frac: float = 0.0,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """Corrupts the chosen positions: [MASK] with probability ``mask_frac``, a uniformly random token with
    ``random_frac``, else left as is. ELECTRA uses 0.85/0/0.15, BERT and ALBERT 0.8/0.1/0.1."""
    original = input_ids.gather(1, positions.index)
    u = torch.rand(original.shape, generator=generator, device=input_ids.device)
    replaced = torch.where(u < mask_frac, torch.full_like(original, mask_token_id), original)
    if random_frac > 0:
        if vocab_size is None:
            raise ValueError("random replacement needs vocab_size")
        rand_tok = torch.randint(vocab_size, original.shape, generator=generator, device=input_ids.device)
        replaced = torch.where((u >= mask_frac) & (u < mask_frac + random_frac), rand_tok, replaced)
    return scatter_at(input_ids, positions, replaced)


def gumbel_max_sample(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One sample per row from softmax(logits) by the Gumbel-max trick, in fp32 and without gradient: a sample
    that depends on no autograd graph and on no bf16 rounding of the logits."""
    with torch.no_grad():
        u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
        gumbel = -torch.log(-torch.log(u.clamp(min=1e-9, max=1.0 - 1e-7)))
        return (logits.detach().float() + gumbel).argmax(dim=-1)
