"""``evaluate_checkpoint``: a checkpoint and its references, held-out pretraining metrics and downstream tasks, in
one recipe:

    load the checkpoint -> held-out metrics -> per task: frozen features once, then fine-tune once per seed
    -> the same for the source model (no held-out metrics: it has no ELECTRA/ALBERT heads) and a random init

Runs in the calling process on the CPU (or ``device``), one model in memory at a time besides the checkpoint.
``progress`` is told each unit of work as it starts (``units`` says how many there are), so a CLI can draw a bar.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from coordinator.evaluation.encoders import (
    Encoder,
    backbone,
    frozen_features,
    load_checkpoint,
    load_source_encoder,
    load_tokenizer,
    random_like,
    source_name,
)
from coordinator.evaluation.finetune import finetune_classifier, finetune_similarity
from coordinator.evaluation.heldout import heldout_batches, heldout_metrics
from coordinator.evaluation.results import EvaluationReport, ModelEvaluation, TaskScores
from coordinator.evaluation.spec import (
    CHECKPOINT,
    EXPORTED_FROM,
    RANDOM_INIT,
    SOURCE,
    EvaluationSpec,
    FinetuneBudget,
)
from coordinator.evaluation.tasks import ClassificationTask, Task, load_tasks
from peer.errors import UserError
from peer.run.state_format import read_checkpoint_step

logger = logging.getLogger(__name__)


def evaluate_checkpoint(
    path: str | Path, spec: EvaluationSpec, progress: Callable[[str], None] = logger.info
) -> EvaluationReport:
    spec.check()
    if EXPORTED_FROM in spec.references:
        raise UserError(f"--references {EXPORTED_FROM} is an export's reference; {path} is a checkpoint")
    started = time.perf_counter()
    path = Path(path)
    tasks = load_tasks(list(spec.tasks))
    models = load_checkpoint(path)
    tokenizer = load_tokenizer(path)
    positions = models.discriminator.config.max_position_embeddings
    if spec.budget.max_length > positions:
        raise UserError(f"--max-length {spec.budget.max_length} exceeds the checkpoint's {positions} positions")
    seeds = list(range(spec.seeds))
    heldout = []
    if spec.heldout_batches:
        heldout = heldout_batches(spec.run_config, models, tokenizer, spec.heldout_batches, spec.heldout_batch_size)
    results = []
    checkpoint = Encoder(CHECKPOINT, str(path), backbone(models.discriminator), tokenizer, models)
    results.append(_evaluate_model(checkpoint, tasks, seeds, spec, heldout, progress))
    if SOURCE in spec.references:
        source = load_source_encoder(spec.source or source_name(path))
        results.append(_evaluate_model(source, tasks, seeds, spec, heldout, progress))
        del source
    if RANDOM_INIT in spec.references:
        fresh = random_like(models, spec.random_init_seed)
        del models, checkpoint
        name = f"random init of the checkpoint's architecture (seed {spec.random_init_seed})"
        random_init = Encoder(RANDOM_INIT, name, backbone(fresh.discriminator), tokenizer, fresh)
        results.append(_evaluate_model(random_init, tasks, seeds, spec, heldout, progress))
    data = spec.run_config.data
    setup = {}
    if heldout:
        setup = {"source": data.source, "heldout_fraction": data.heldout_fraction, "seq_len": data.seq_len,
                 "batches": len(heldout), "batch_size": spec.heldout_batch_size}  # fmt: skip
    return EvaluationReport(
        checkpoint=str(path),
        step=read_checkpoint_step(path),
        seeds=seeds,
        budget=spec.budget,
        heldout_setup=setup,
        models=results,
        seconds=time.perf_counter() - started,
    )


def evaluate_models(
    name: str, step: int, loaders: list[Callable[[], Encoder]], spec: EvaluationSpec, progress=logger.info
) -> EvaluationReport:
    """The downstream tasks (no held-out metrics) for models loaded one at a time by ``loaders``, first the one
    under evaluation, then its references: what an export's evaluation is (``coordinator.export.scores``), where the
    models are not pretraining checkpoints."""
    spec.check()
    started = time.perf_counter()
    tasks = load_tasks(list(spec.tasks))
    seeds = list(range(spec.seeds))
    results = []
    for load in loaders:
        model = load()
        positions = getattr(model.encoder.config, "max_position_embeddings", spec.budget.max_length)
        if spec.budget.max_length > positions:
            raise UserError(f"--max-length {spec.budget.max_length} exceeds {model.name}'s {positions} positions")
        results.append(_evaluate_model(model, tasks, seeds, spec, [], progress))
        del model
    return EvaluationReport(
        checkpoint=name,
        step=step,
        seeds=seeds,
        budget=spec.budget,
        heldout_setup={},
        models=results,
        seconds=time.perf_counter() - started,
    )


def _evaluate_model(
    model: Encoder, tasks: list[Task], seeds: list[int], spec: EvaluationSpec, heldout: list, progress
) -> ModelEvaluation:
    started = time.perf_counter()
    result = ModelEvaluation(model.role, model.name, model.parameters)
    if heldout and model.pretraining is not None:
        progress(f"{model.role}: held-out pretraining metrics")
        result.heldout = heldout_metrics(spec.run_config, model.pretraining, model.tokenizer, heldout)
    for task in tasks:
        result.tasks.append(_evaluate_task(model, task, seeds, spec.budget, progress))
    result.seconds = time.perf_counter() - started
    return result


def _evaluate_task(model: Encoder, task: Task, seeds: list[int], budget: FinetuneBudget, progress) -> TaskScores:
    started = time.perf_counter()
    info = task.info
    progress(f"{model.role}: {info.name} features")
    if isinstance(task, ClassificationTask):
        features = [_features(model, [t for t, _ in split], budget) for split in (task.train, task.test)]
    else:
        features = [_features(model, list(task.texts), budget)]
    per_seed: dict[str, list[float]] = {}
    for seed in seeds:
        progress(f"{model.role}: {info.name} seed {seed}")
        if isinstance(task, ClassificationTask):
            scores = finetune_classifier(task, model.encoder, *features, seed, budget)
        else:
            scores = finetune_similarity(task, model.encoder, *features, seed, budget)
        for key, value in scores.items():
            per_seed.setdefault(key, []).append(value)
    result = TaskScores(
        task=info.name,
        title=info.title,
        task_type=info.task_type,
        dataset=info.dataset,
        metric=info.metric,
        seeds=list(seeds),
        scores=per_seed.pop(info.metric),
        other=per_seed,
        seconds=time.perf_counter() - started,
    )
    logger.debug("%s %s: %.3f ± %.3f", model.role, info.name, result.mean, result.sd)
    return result


def _features(model: Encoder, texts: list[str], budget: FinetuneBudget):
    return frozen_features(model.encoder, model.tokenizer, texts, budget.max_length, budget.train_layers)
