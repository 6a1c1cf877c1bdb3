"""The pretraining objective's held-out metrics, computed exactly as the trainer computes them: the run's held-out
documents (``peer.data.build_heldout_batches``: the per-document hash split of ``data.heldout_fraction``) through the
run's objective (``peer.objectives``: ELECTRA's generator MLM loss, discriminator loss and AUC; ALBERT's MLM and
SOP), with the objective's fixed evaluation masks, so two models are scored on the same tokens and masks.
"""

from __future__ import annotations

import dataclasses

from peer.config import RunConfig
from peer.data import build_heldout_batches, check_seq_len
from peer.modeling import PretrainingModels
from peer.objectives import build_objective

KEEP = ("loss", "mlm_loss", "mlm_accuracy", "disc_loss", "disc_auc", "disc_accuracy", "sop_loss", "sop_accuracy")


def run_config_for(cfg: RunConfig, models: PretrainingModels) -> RunConfig:
    """``cfg`` with the model's architecture and the matching objective (a checkpoint knows its architecture; the
    default config need not match it)."""
    arch = "albert" if models.generator is None else "electra"
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, architecture=arch),
        objective=dataclasses.replace(cfg.objective, name=arch),
    )


def heldout_batches(cfg: RunConfig, models: PretrainingModels, tokenizer, batches: int, batch_size: int) -> list:
    cfg = run_config_for(cfg, models)
    check_seq_len(cfg.data, models.discriminator.config.max_position_embeddings)
    return build_heldout_batches(
        cfg.data, tokenizer, batch_size, cfg.objective.name, batches, sop_prob=cfg.objective.sop_prob
    )


def heldout_metrics(cfg: RunConfig, models: PretrainingModels, tokenizer, batches: list) -> dict[str, float]:
    cfg = run_config_for(cfg, models)
    metrics = build_objective(cfg, models, mask_token_id=tokenizer.mask_token_id).evaluate(batches)
    return {k: float(v) for k, v in metrics.items() if k in KEEP}
