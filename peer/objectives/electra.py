"""ELECTRA replaced-token detection, as google-research/electra computes it.

One step: choose round(15 %) of the real, non-special tokens per sequence; put [MASK] at 85 % of them (the original
token at the rest); the generator (a narrow ElectraForMaskedLM sharing the discriminator's embeddings) predicts the
originals there, the vocabulary projection computed on those rows only; a replacement is drawn from its softmax by
Gumbel-max in fp32 without gradient; the discriminator sees the sequence with the replacements and labels each real
token "replaced" only where the sample differs from the original (a correct guess is "original"). Loss = generator
MLM + λ x discriminator BCE over real, non-special tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from peer.config import ObjectiveSpec
from peer.modeling import PretrainingModels
from peer.objectives.base import Objective, ObjectiveOutput, binary_auc
from peer.objectives.losses import electra_loss, masked_lm_loss, replaced_token_loss
from peer.objectives.masking import (
    MaskedPositions,
    candidate_mask,
    gather_rows,
    gumbel_max_sample,
    mask_inputs,
    sample_token_positions,
    scatter_at,
)
from peer.objectives.metrics import MaskedLMTally, masked_accuracy

# google-research/electra: of the chosen positions, 85 % get [MASK] and 15 % keep their token (no random tokens).
ELECTRA_MASK_FRACTION = 0.85


def generator_logits_at(generator: torch.nn.Module, batch: dict[str, torch.Tensor], input_ids, index) -> torch.Tensor:
    """The generator's vocabulary logits at ``index`` only: backbone over the whole sequence, then the prediction
    head and the (tied) output layer on the gathered rows. For ELECTRA-small this skips ~85 % of the generator's
    largest matmul (E x 30522 per token)."""
    hidden = generator.electra(
        input_ids=input_ids, attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"]
    ).last_hidden_state
    return generator.generator_lm_head(generator.generator_predictions(gather_rows(hidden, index)))


@dataclass
class Corruption:
    """The discriminator's input for one batch: the generator's samples put in at the masked positions."""

    positions: MaskedPositions
    mlm_logits: torch.Tensor  # [B, K, V] generator logits on the masked rows only
    mlm_labels: torch.Tensor  # [B, K] original tokens at those rows
    sampled: torch.Tensor  # [B, K] the generator's Gumbel-max samples
    disc_input: torch.Tensor  # [B, L] the original ids with the samples at the masked positions
    candidates: torch.Tensor  # [B, L] bool: real, non-special tokens


@dataclass
class ElectraStep(Corruption):
    """Everything one ELECTRA forward pass produced (the corruption, and the discriminator's answer to it); the losses
    and metrics are functions of these tensors."""

    disc_logits: torch.Tensor  # [B, L]
    disc_labels: torch.Tensor  # [B, L] 1 where the discriminator's input differs from the original
    disc_weight: torch.Tensor  # [B, L] 1 on real, non-special tokens


def corrupt(
    models: PretrainingModels,
    batch: dict[str, torch.Tensor],
    rng: torch.Generator,
    mask_prob: float,
    mask_token_id: int,
    static: bool = True,
) -> Corruption:
    """The generator's half of an ELECTRA step (what the discriminator is then asked about); also the input that
    a distilled discriminator learns on (``coordinator.export``)."""
    input_ids = batch["input_ids"]
    cand = candidate_mask(batch)
    positions = sample_token_positions(cand, mask_prob, rng, static=static)
    masked_ids = mask_inputs(input_ids, positions, mask_token_id, rng, ELECTRA_MASK_FRACTION)
    mlm_labels = input_ids.gather(1, positions.index)
    mlm_logits = generator_logits_at(models.generator, batch, masked_ids, positions.index)
    with torch.autocast(device_type=input_ids.device.type, enabled=False):
        sampled = gumbel_max_sample(mlm_logits, rng)
    return Corruption(positions, mlm_logits, mlm_labels, sampled, scatter_at(input_ids, positions, sampled), cand)


def electra_forward(
    models: PretrainingModels,
    batch: dict[str, torch.Tensor],
    rng: torch.Generator,
    mask_prob: float,
    mask_token_id: int,
    static: bool = True,
) -> ElectraStep:
    c = corrupt(models, batch, rng, mask_prob, mask_token_id, static)
    disc_labels = (c.disc_input != batch["input_ids"]) & c.candidates
    disc_logits = models.discriminator(
        input_ids=c.disc_input, attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"]
    ).logits
    return ElectraStep(**vars(c), disc_logits=disc_logits, disc_labels=disc_labels, disc_weight=c.candidates.float())


class ElectraObjective(Objective):
    def __init__(self, models: PretrainingModels, spec: ObjectiveSpec, seed: int, mask_token_id: int):
        if models.generator is None:
            raise ValueError("ELECTRA needs a generator model")
        super().__init__(models, seed)
        self.spec = spec
        self.mask_token_id = mask_token_id

    def step(self, batch: dict[str, torch.Tensor], rng: torch.Generator) -> ElectraStep:
        return electra_forward(
            self.models, batch, rng, self.spec.mask_prob, self.mask_token_id, static=self.spec.static_masking
        )

    def forward(self, batch: dict[str, torch.Tensor], rng: torch.Generator) -> ObjectiveOutput:
        s = self.step(batch, rng)
        mlm = masked_lm_loss(s.mlm_logits, s.mlm_labels, s.positions.weight)
        disc = replaced_token_loss(s.disc_logits, s.disc_labels, s.disc_weight)
        loss = electra_loss(mlm, disc, self.spec.disc_weight)
        with torch.no_grad():
            mlm_acc = masked_accuracy(s.mlm_logits, s.mlm_labels, s.positions.weight)
            disc_correct = ((s.disc_logits > 0) == s.disc_labels).float()
            disc_acc = (disc_correct * s.disc_weight).sum() / s.disc_weight.sum().clamp(min=1)
        metrics = {
            "loss": loss.detach(),
            "mlm_loss": mlm.detach(),
            "disc_loss": disc.detach(),
            "mlm_accuracy": mlm_acc,
            "disc_accuracy": disc_acc,
        }
        return ObjectiveOutput(loss, metrics)

    @torch.no_grad()
    def evaluate(self, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        mlm = MaskedLMTally()
        sampled_hit = 0.0
        disc_sum = disc_n = disc_hit = 0.0
        scores, labels = [], []
        with self.evaluating() as rng:
            for raw in batches:
                s = self.step(self.to_device(raw), rng)
                mlm.add(s.mlm_logits, s.mlm_labels, s.positions.weight)
                sampled_hit += float(((s.sampled == s.mlm_labels).float() * s.positions.weight).sum())
                keep = s.disc_weight > 0
                dn = float(keep.sum())
                disc_sum += float(replaced_token_loss(s.disc_logits, s.disc_labels, s.disc_weight)) * dn
                disc_n += dn
                disc_hit += float(((s.disc_logits > 0) == s.disc_labels)[keep].float().sum())
                scores.append(s.disc_logits[keep].float().cpu())
                labels.append(s.disc_labels[keep].cpu())
        if not mlm.rows or not disc_n:
            return {}
        score, label = torch.cat(scores), torch.cat(labels)
        predicted = score > 0
        tp = float((predicted & label).sum())
        disc_loss = disc_sum / disc_n
        return {
            "loss": mlm.loss + self.spec.disc_weight * disc_loss,
            "mlm_loss": mlm.loss,
            "mlm_accuracy": mlm.accuracy,
            "sampled_accuracy": sampled_hit / mlm.rows,
            "disc_loss": disc_loss,
            "disc_accuracy": disc_hit / disc_n,
            "disc_auc": binary_auc(score, label),
            "disc_precision": tp / max(float(predicted.sum()), 1.0),
            "disc_recall": tp / max(float(label.sum()), 1.0),
            "replaced_fraction": float(label.float().mean()),
        }
