"""What an evaluation is asked to do: which tasks and references, how many seeds, and the fine-tuning budget.
Plain dataclasses, checked before any model is loaded (so a bad flag is refused in a blink)."""

from __future__ import annotations

from dataclasses import dataclass, field

from coordinator.evaluation.tasks import DEFAULT_TASKS, LOADERS
from peer.config import RunConfig
from peer.errors import UserError

CHECKPOINT, SOURCE, RANDOM_INIT = "checkpoint", "source", "random_init"
EXPORTED_FROM = "exported_from"  # an export's own checkpoint (fp32), the baseline of its score change
REFERENCES = (SOURCE, RANDOM_INIT, EXPORTED_FROM)


@dataclass
class FinetuneBudget:
    """How much each (model, task, seed) fine-tuning may cost. The embeddings and all but the top ``train_layers``
    encoder layers stay frozen, so their outputs are computed once per model and task, and every seed trains only
    the top ``train_layers`` layers and the head (0: a probe on frozen features; ``lee`` is then scored zero-shot)."""

    steps: int = 20  # defaults sized for the demo model on a 2-core CPU: bench/README.md, "Downstream evaluation"
    batch_size: int = 16
    max_length: int = 96
    train_layers: int = 1
    lr: float = 1e-4  # the trained encoder layers
    head_lr: float = 2e-3  # the classification head
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1

    def check(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.train_layers < 0:
            raise UserError("--steps and --train-layers must be >= 0 and --batch-size >= 1")
        if self.max_length < 8:
            raise UserError(f"--max-length {self.max_length} is too short; use at least 8")
        if self.lr <= 0 or self.head_lr <= 0:
            raise UserError("learning rates must be positive")


@dataclass
class EvaluationSpec:
    """What to evaluate and how much to spend. ``run_config`` supplies the held-out split (``data``) and the
    objective's settings; ``source`` None means the one the checkpoint's ``growth.json`` names."""

    tasks: tuple[str, ...] = DEFAULT_TASKS
    seeds: int = 3
    budget: FinetuneBudget = field(default_factory=FinetuneBudget)
    references: tuple[str, ...] = REFERENCES
    source: str | None = None
    run_config: RunConfig = field(default_factory=RunConfig)
    heldout_batches: int = 8  # 0: skip the held-out metrics
    heldout_batch_size: int = 8
    random_init_seed: int = 0

    def check(self) -> None:
        self.budget.check()
        if self.seeds < 1:
            raise UserError("--seeds must be at least 1")
        if self.heldout_batches < 0 or self.heldout_batch_size < 1:
            raise UserError("--heldout-batches must be >= 0")
        unknown = [r for r in self.references if r not in REFERENCES]
        if unknown:
            raise UserError(f"unknown reference {unknown[0]!r} (known: {', '.join(REFERENCES)})")
        unknown = [n for n in self.tasks if n not in LOADERS]
        if unknown or not self.tasks:
            raise UserError(f"unknown task {unknown[0] if unknown else '(none)'!r} (known: {', '.join(LOADERS)})")

    def units(self) -> int:
        """Units of work ``progress`` is told about: per model its held-out metrics, then per task its features and
        each seed."""
        models = 1 + len(self.references)
        with_heldout = (1 + (RANDOM_INIT in self.references)) if self.heldout_batches else 0
        return models * len(self.tasks) * (1 + self.seeds) + with_heldout
