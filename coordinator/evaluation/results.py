"""What an evaluation produced, as plain dataclasses that round-trip through JSON (``to_dict`` / ``from_dict``), so
the CLI, the model card and later the store, the API and the dashboard read one type. Nothing here imports torch.

Scores are in their metric's natural range (accuracy in [0, 1], correlations in [-1, 1]); ``mean`` and ``sd`` are
over fine-tuning seeds, ``sd`` the sample standard deviation (0 for a single seed).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.evaluation.spec import CHECKPOINT, EXPORTED_FROM, RANDOM_INIT, SOURCE, FinetuneBudget
from peer.errors import UserError

logger = logging.getLogger(__name__)

ROLE_TITLES = {CHECKPOINT: "checkpoint", SOURCE: "source", RANDOM_INIT: "random init", EXPORTED_FROM: "exported from"}
# A checkpoint's report, written by the coordinator's background evaluation beside (not among) its verified files.
EVALUATION_FILE = "evaluation.json"


@dataclass
class TaskScores:
    """One task's scores for one model: ``scores[i]`` is ``metric`` after fine-tuning with ``seeds[i]``;
    ``other`` holds further metrics per seed (e.g. Pearson beside Spearman)."""

    task: str
    title: str
    task_type: str
    dataset: str
    metric: str
    seeds: list[int]
    scores: list[float]
    other: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores) if self.scores else math.nan

    @property
    def sd(self) -> float:
        return statistics.stdev(self.scores) if len(self.scores) > 1 else 0.0


@dataclass
class ModelEvaluation:
    """One evaluated model: the checkpoint, its source model or a random init of the checkpoint's architecture.
    ``heldout`` holds the pretraining objective's held-out metrics (empty for a model without the run's heads)."""

    role: str  # CHECKPOINT | SOURCE | RANDOM_INIT
    name: str  # a path, a source name, or how the random init was drawn
    encoder_parameters: int
    heldout: dict[str, float] = field(default_factory=dict)
    tasks: list[TaskScores] = field(default_factory=list)
    seconds: float = 0.0

    def task(self, name: str) -> TaskScores | None:
        return next((t for t in self.tasks if t.task == name), None)


@dataclass
class EvaluationReport:
    """A checkpoint's evaluation with its references, and how it was run."""

    checkpoint: str
    step: int
    seeds: list[int]
    budget: FinetuneBudget
    heldout_setup: dict  # {"source", "heldout_fraction", "seq_len", "batches", "batch_size"} or {} when skipped
    models: list[ModelEvaluation]
    seconds: float = 0.0

    def model(self, role: str) -> ModelEvaluation | None:
        return next((m for m in self.models if m.role == role), None)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, allow_nan=True) + "\n")

    @classmethod
    def from_dict(cls, data: dict) -> EvaluationReport:
        try:
            models = [ModelEvaluation(**{**m, "tasks": [TaskScores(**t) for t in m["tasks"]]}) for m in data["models"]]
            return cls(**{**data, "budget": FinetuneBudget(**data["budget"]), "models": models})
        except (KeyError, TypeError) as e:
            raise UserError(f"not an evaluation report: {e}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> EvaluationReport:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read the evaluation report {path}: {e}") from None


def read_side_file(checkpoint_dir: str | Path) -> EvaluationReport | None:
    """The checkpoint's ``evaluation.json``, or None if it has none or it cannot be read (logged)."""
    path = Path(checkpoint_dir) / EVALUATION_FILE
    if not path.is_file():
        return None
    try:
        return EvaluationReport.from_json(path)
    except UserError as e:
        logger.warning("ignoring %s: %s", path, e)
        return None


def mean_sd(scores: TaskScores | None) -> str:
    return "-" if scores is None else f"{scores.mean:.3f} ± {scores.sd:.3f}"


def summary_rows(report: EvaluationReport) -> tuple[list[str], list[list[str]]]:
    """The summary table as plain strings: a column per model, a row per task (mean ± sd over the seeds) and per
    held-out pretraining metric."""
    header = ["", *(ROLE_TITLES.get(m.role, m.role) for m in report.models)]
    rows = []
    tasks = dict.fromkeys(t.task for m in report.models for t in m.tasks)
    for name in tasks:
        first = next(t for m in report.models if (t := m.task(name)) is not None)
        rows.append([f"{name} ({first.metric})", *(mean_sd(m.task(name)) for m in report.models)])
    for key in dict.fromkeys(k for m in report.models for k in m.heldout):
        cells = [f"{m.heldout[key]:.4f}" if key in m.heldout else "-" for m in report.models]
        rows.append([f"held-out {key}", *cells])
    return header, rows
