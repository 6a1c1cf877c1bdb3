"""What a swarm peer trains on: the run's tokenizer, the objective with this process's batches, the held-out
evaluation.

Shared by a peer (``peer.swarm.session``) and the follower ranks of a multi-GPU peer (``peer.swarm.follower``),
which differ only in their seeds; its own module so that neither imports the other."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import torch
from transformers import AutoTokenizer

from peer.config import RunConfig
from peer.data import build_heldout_batches, build_train_batches
from peer.errors import UserError
from peer.growth import resolve_source
from peer.modeling import PretrainingModels
from peer.objectives import Objective, build_objective
from peer.trainer import step_spec
from peer.trainer.batch_fit import fit_batch_size, step_probe
from peer.trainer.step import TrainStep

logger = logging.getLogger(__name__)


def load_tokenizer(cfg: RunConfig, init_dir: str | None):
    source = Path(init_dir) if init_dir else resolve_source(cfg.growth.source)
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the tokenizer from {source}: {str(e).splitlines()[0]}") from None


def training_inputs(
    cfg: RunConfig, models: PretrainingModels, tokenizer, seed: int
) -> tuple[Objective, Iterator[dict]]:
    """The objective (its masking seeded by ``seed``) and this process's micro-batches of ``train.batch_size``
    (their order seeded by ``seed``); shared by a peer and the follower ranks of a multi-GPU peer, which differ only
    in their seeds. Autocast, accumulation and clipping are the training step's (``peer.trainer.step``)."""
    objective = build_objective(cfg, models, tokenizer.mask_token_id, seed=seed)
    batches = build_train_batches(
        cfg.data,
        tokenizer,
        cfg.train.batch_size,
        cfg.objective.name,
        shuffle_seed=seed,
        sop_prob=cfg.objective.sop_prob,
    )
    return objective, batches


def heldout_evaluation(cfg: RunConfig, objective: Objective, tokenizer) -> Callable[[], dict[str, float]] | None:
    """The objective's held-out metrics over the run's held-out batches (the same batches every call, so two
    evaluations differ only by the weights), or None when ``train.eval_every`` is 0 or there is no held-out text."""
    if cfg.train.eval_every <= 0 or cfg.train.eval_batches <= 0:
        return None
    heldout = build_heldout_batches(
        cfg.data, tokenizer, cfg.train.batch_size, cfg.objective.name, cfg.train.eval_batches, cfg.objective.sop_prob
    )
    if not heldout:
        return None
    return partial(objective.evaluate, heldout)


def fit_micro_batch(
    cfg: RunConfig,
    models: PretrainingModels,
    tokenizer,
    seed: int,
    device: torch.device,
    by_throughput: bool | None = None,
) -> int:
    """``--batch_size auto``: the micro-batch ``peer.trainer.batch_fit`` picks for ``models`` on ``device`` (by
    throughput on a CPU, by memory elsewhere, unless ``by_throughput`` says), probed with the training step itself
    on one batch of the run's data. The probes run their own objective and batches (discarded after), so the peer's
    training draws the same masks and data as with a number given."""
    one = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=1, grad_accum=1))
    objective, batches = training_inputs(one, models, tokenizer, seed)
    step = TrainStep(objective, models.parameters(), step_spec(one.train, device))

    def run(batch: dict) -> None:
        try:
            step.backward(iter([batch]))
        finally:
            for module in models.modules():
                module.zero_grad(set_to_none=True)

    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    by_throughput = device.type == "cpu" if by_throughput is None else by_throughput
    size = fit_batch_size(step_probe(run, next(batches), synchronize), by_throughput=by_throughput)
    logger.info("micro-batch %d: the %s on %s", size, "fastest" if by_throughput else "largest that fits", device.type)
    return size
