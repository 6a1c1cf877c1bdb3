"""Training FLOPs per step, ``bench/gpu_step.py``'s convention: 6 x weights x rows for every ``nn.Linear`` (rows =
every token, or the masked positions only for the MLM head and the tied vocabulary projection) + attention,
12 x layers x seq x hidden per token. Also ``bench/midrun_growth.py``'s budget."""

from __future__ import annotations

import torch
from transformers import ElectraForMaskedLM


def _linear_weights(module: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def encoder_flops(encoder: torch.nn.Module, bsz: int, seq: int) -> float:
    """One forward + backward of an ELECTRA backbone (``model.electra``) over every token."""
    c = encoder.config
    tokens = bsz * seq
    return 6.0 * _linear_weights(encoder) * tokens + 12.0 * c.num_hidden_layers * seq * c.hidden_size * tokens


def masked_head_flops(mlm_model: ElectraForMaskedLM, bsz: int, masked_per_seq: int) -> float:
    """The MLM prediction head and the tied vocabulary projection, which run on the masked rows only."""
    weights = _linear_weights(mlm_model.generator_predictions) + mlm_model.generator_lm_head.weight.numel()
    return 6.0 * weights * bsz * masked_per_seq


def electra_step_flops(models, bsz: int, seq: int, masked: int) -> float:
    disc, gen = models.discriminator, models.generator
    head = 6.0 * _linear_weights(disc.discriminator_predictions) * bsz * seq
    return (
        encoder_flops(disc.electra, bsz, seq)
        + head
        + encoder_flops(gen.electra, bsz, seq)
        + masked_head_flops(gen, bsz, masked)
    )


def mlm_step_flops(model: ElectraForMaskedLM, bsz: int, seq: int, masked: int) -> float:
    return encoder_flops(model.electra, bsz, seq) + masked_head_flops(model, bsz, masked)
