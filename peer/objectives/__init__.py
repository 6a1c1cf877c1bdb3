"""Pretraining objectives: ``build_objective(cfg, models)`` returns a callable ``objective(batch) ->
ObjectiveOutput(loss, metrics)`` with ``evaluate(batches)`` and a ``state_dict`` (its masking RNG) for checkpoints.

The trainer (``peer.trainer``) and the swarm loop (``peer.swarm``) both run exactly this step.
"""

from __future__ import annotations

from peer.config import RunConfig
from peer.errors import UserError
from peer.modeling import PretrainingModels
from peer.objectives.albert import AlbertObjective
from peer.objectives.base import Objective, ObjectiveOutput, binary_auc
from peer.objectives.electra import ElectraObjective
from peer.objectives.masking import BERT_MASK_TOKEN_ID

__all__ = ["Objective", "ObjectiveOutput", "binary_auc", "build_objective"]


def build_objective(
    cfg: RunConfig, models: PretrainingModels, mask_token_id: int = BERT_MASK_TOKEN_ID, seed: int | None = None
) -> Objective:
    """The objective named by ``cfg.objective`` over ``models`` (already on their training device).

    ``mask_token_id`` is the tokenizer's [MASK] (pass ``tokenizer.mask_token_id`` for a non-BERT vocabulary);
    ``seed`` overrides ``cfg.objective.seed`` (e.g. a per-peer seed in a swarm)."""
    spec = cfg.objective
    if not 0 < spec.mask_prob < 1:
        raise UserError(f"objective.mask_prob must be in (0, 1), got {spec.mask_prob}")
    if spec.name != cfg.model.architecture:
        raise UserError(f"objective {spec.name!r} does not fit model architecture {cfg.model.architecture!r}")
    seed = spec.seed if seed is None else seed
    if spec.name == "electra":
        if models.generator is None:
            raise UserError("the ELECTRA objective needs a generator (generator/ in the model dir)")
        return ElectraObjective(models, spec, seed, mask_token_id)
    if spec.name == "albert":
        if spec.max_ngram < 1:
            raise UserError(f"objective.max_ngram must be ≥ 1, got {spec.max_ngram}")
        return AlbertObjective(models, spec, seed, mask_token_id)
    raise UserError(f"unknown objective {spec.name!r} (known: electra, albert)")
