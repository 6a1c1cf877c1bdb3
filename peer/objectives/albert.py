"""ALBERT pretraining: whole-word n-gram masked LM + sentence-order prediction (SOP), as google-research/albert.

Masking picks whole-word n-grams (n ≤ 3, p(n) ∝ 1/n) up to round(15 %) of the real, non-special tokens, then
replaces them BERT-style (80 % [MASK], 10 % a random token, 10 % unchanged). The batch carries the SOP label (0 =
segments in order, 1 = swapped), so this module only scores it. The MLM head runs on the masked rows only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from peer.config import ObjectiveSpec
from peer.modeling import PretrainingModels
from peer.objectives.base import Objective, ObjectiveOutput
from peer.objectives.losses import masked_lm_loss, sentence_order_loss
from peer.objectives.masking import (
    MaskedPositions,
    gather_rows,
    mask_inputs,
    max_predictions,
    positions_from_mask,
    sample_ngram_spans,
)
from peer.objectives.metrics import MaskedLMTally, masked_accuracy

BERT_MASK_FRACTION = 0.8
BERT_RANDOM_FRACTION = 0.1


@dataclass
class AlbertStep:
    positions: MaskedPositions
    mlm_logits: torch.Tensor  # [B, K, V] on the masked rows only
    mlm_labels: torch.Tensor  # [B, K]
    sop_logits: torch.Tensor  # [B, 2]
    sop_labels: torch.Tensor  # [B]


def albert_forward(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    rng: torch.Generator,
    spec: ObjectiveSpec,
    mask_token_id: int,
) -> AlbertStep:
    input_ids = batch["input_ids"]
    mask = sample_ngram_spans(batch, spec.mask_prob, spec.max_ngram, rng)
    # The n-gram budget never exceeds round(mask_prob x L) ≤ max_predictions(L): a safe static K.
    k = max_predictions(input_ids.shape[1], spec.mask_prob) if spec.static_masking else None
    positions = positions_from_mask(mask, k)
    vocab = model.config.vocab_size
    masked_ids = mask_inputs(
        input_ids, positions, mask_token_id, rng, BERT_MASK_FRACTION, BERT_RANDOM_FRACTION, vocab_size=vocab
    )
    out = model.albert(
        input_ids=masked_ids, attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"]
    )
    mlm_logits = model.predictions(gather_rows(out.last_hidden_state, positions.index))
    sop_logits = model.sop_classifier(out.pooler_output)
    return AlbertStep(
        positions, mlm_logits, input_ids.gather(1, positions.index), sop_logits, batch["sentence_order_label"]
    )


class AlbertObjective(Objective):
    def __init__(self, models: PretrainingModels, spec: ObjectiveSpec, seed: int, mask_token_id: int):
        super().__init__(models, seed)
        self.spec = spec
        self.mask_token_id = mask_token_id

    def step(self, batch: dict[str, torch.Tensor], rng: torch.Generator) -> AlbertStep:
        return albert_forward(self.models.discriminator, batch, rng, self.spec, self.mask_token_id)

    def forward(self, batch: dict[str, torch.Tensor], rng: torch.Generator) -> ObjectiveOutput:
        s = self.step(batch, rng)
        mlm = masked_lm_loss(s.mlm_logits, s.mlm_labels, s.positions.weight)
        sop = sentence_order_loss(s.sop_logits, s.sop_labels)
        loss = mlm + sop
        with torch.no_grad():
            mlm_acc = masked_accuracy(s.mlm_logits, s.mlm_labels, s.positions.weight)
            sop_acc = (s.sop_logits.argmax(-1) == s.sop_labels).float().mean()
        metrics = {
            "loss": loss.detach(),
            "mlm_loss": mlm.detach(),
            "sop_loss": sop.detach(),
            "mlm_accuracy": mlm_acc,
            "sop_accuracy": sop_acc,
        }
        return ObjectiveOutput(loss, metrics)

    @torch.no_grad()
    def evaluate(self, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        mlm = MaskedLMTally()
        sop_sum = sop_hit = n_seq = 0.0
        with self.evaluating() as rng:
            for raw in batches:
                s = self.step(self.to_device(raw), rng)
                mlm.add(s.mlm_logits, s.mlm_labels, s.positions.weight)
                b = s.sop_labels.numel()
                sop_sum += float(sentence_order_loss(s.sop_logits, s.sop_labels)) * b
                sop_hit += float((s.sop_logits.argmax(-1) == s.sop_labels).float().sum())
                n_seq += b
        if not mlm.rows or not n_seq:
            return {}
        return {
            "loss": mlm.loss + sop_sum / n_seq,
            "mlm_loss": mlm.loss,
            "mlm_accuracy": mlm.accuracy,
            "sop_loss": sop_sum / n_seq,
            "sop_accuracy": sop_hit / n_seq,
        }
