"""The checkpoint evaluations as the APIs answer them: per checkpoint, whether its evaluation is done (or how often
it failed) and its scores, read from the store; and a checkpoint's model card with its scores.

Why the card is built on request rather than stored: a checkpoint's ``README.md`` is one of its verified files
(listed with its sha256 in the manifest, checked by every download), written before any evaluation exists; the
evaluation arrives minutes later as ``evaluation.json`` beside those files. Rewriting the verified card would break
the manifest, and a second stored card could disagree with either file, so ``/api/v1/checkpoints/NAME/card`` renders
the card from the checkpoint and its ``evaluation.json`` each time (a few milliseconds), with the scores as its
``model-index``; a downloaded checkpoint keeps the card it was saved with.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from coordinator.card import build_model_card
from coordinator.evaluation.results import read_side_file
from coordinator.evaluation.tasks import TASK_INFO
from coordinator.store import EvaluationAttempts, EvaluationScore, Store
from peer.config import DataSpec, config_from_dict
from peer.errors import UserError

logger = logging.getLogger(__name__)


def _entry(attempts: EvaluationAttempts, scores: list[EvaluationScore]) -> dict:
    return {
        "checkpoint": attempts.checkpoint,
        "step": attempts.step,
        "done": attempts.done,
        "attempts": attempts.attempts,
        "error": attempts.error,
        "seconds": attempts.seconds,
        "scores": [
            {**{k: v for k, v in dataclasses.asdict(s).items() if k not in ("checkpoint", "step")},
             "headline": _headline(s)}
            for s in scores
        ],
    }  # fmt: skip


def _headline(score: EvaluationScore) -> bool:
    """Whether this is its task's headline metric (what the dashboard plots and the card's model-index gives)."""
    info = TASK_INFO.get(score.task)
    return info is not None and info.metric == score.metric


def evaluation_entries(store: Store) -> dict[str, dict]:
    """Every checkpoint whose evaluation finished or failed, pruned ones included, by name (oldest step first):
    ``{checkpoint, step, done, attempts, error, seconds, scores: [{role, task, metric, mean, sd, seeds, scores,
    headline}]}``.
    A checkpoint not listed has not been evaluated yet."""
    by_name: dict[str, list[EvaluationScore]] = {}
    for score in store.evaluations():
        by_name.setdefault(score.checkpoint, []).append(score)
    return {name: _entry(a, by_name.get(name, [])) for name, a in store.evaluation_attempts().items()}


def run_data(config: dict) -> DataSpec | None:
    """The run's corpus for the card (None when the published config does not say)."""
    try:
        return config_from_dict(config).data
    except (UserError, ValueError, TypeError):
        return None


def served_card(checkpoint_dir: Path, data: DataSpec | None) -> str:
    """The checkpoint's model card with its evaluation (``model-index``) when it has one."""
    return str(build_model_card(checkpoint_dir, data=data, evaluation=read_side_file(checkpoint_dir)))
