"""A follower rank of a multi-GPU peer (``peer.swarm.ddp``): the same model and objective as the leader, its own
slice of the data, and a loop that matches the leader's collectives one for one until the leader dismisses the
group. It never touches the DHT. Split from ``ddp.py`` (the group's collectives) so that the leader's loop
(``peer.swarm.loop``) and this one both build on ``ddp`` without importing each other or the session."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from peer.data.shuffle import derive_seed
from peer.errors import UserError
from peer.memory import PeriodicRelease
from peer.modeling import build_models, load_models
from peer.swarm.ddp import Decision, PeerGroup, SetupReport, params_digest
from peer.swarm.training_inputs import load_tokenizer, training_inputs
from peer.trainer import compile_models, step_spec
from peer.trainer.step import StepObjective, StepSpec, TrainStep


@dataclass
class FollowResult:
    global_step: int
    local_steps: int
    samples: int
    skipped_batches: int
    compute_seconds: float
    wall_seconds: float
    last_loss: float
    params_digest: str


def follow_loop(
    params: list[torch.nn.Parameter],
    objective: StepObjective,
    batches: Iterator[dict],
    spec: StepSpec,
    group: PeerGroup,
    stop_requested: Callable[[], bool],
) -> FollowResult:
    """A follower's side of ``train_loop``: compute the same step (``peer.trainer.step``: accumulation, the finite
    guard, its own fp16 un-scaling), send gradients and flags, obey the leader's decision. The leader clips the
    group's mean gradient."""
    start = time.monotonic()
    compute = 0.0
    local_steps = samples = skipped = 0
    step = TrainStep(objective, params, spec)
    group.sync_params(params)  # the state the leader joined the swarm with
    decision = Decision(skipped=False, stop=False, params_changed=False, global_step=0, mean_loss=float("nan"))
    releaser = PeriodicRelease()  # the leader's loop does the same (peer.swarm.loop)
    while True:
        t0 = time.perf_counter()
        computed = step.backward(batches)
        healthy = step.unscale(computed)
        compute += time.perf_counter() - t0
        group.reduce_step(params, computed.loss if healthy else 0.0, healthy, stop_requested())
        decision = group.decide(None)
        for p in params:
            p.grad = None
        step.update_scale()
        if decision.params_changed:
            group.sync_params(params)
        if decision.skipped:
            skipped += 1 if not decision.stop else 0  # a dismissal is not a skipped batch
        else:
            local_steps += 1
            samples += computed.samples
        if decision.stop:
            break
        releaser.maybe()
    return FollowResult(
        global_step=decision.global_step,
        local_steps=local_steps,
        samples=samples,
        skipped_batches=skipped,
        compute_seconds=compute,
        wall_seconds=time.monotonic() - start,
        last_loss=decision.mean_loss,
        params_digest=params_digest(params),
    )


def check_rank_shapes(report: SetupReport, params: Sequence[torch.Tensor]) -> None:
    mine = tuple(tuple(p.shape) for p in params)
    if mine != report.shapes:
        raise UserError(
            "this rank's model does not match rank 0's (different config or --init_dir per rank?): "
            f"{len(mine)} vs {len(report.shapes)} tensors"
        )


def follow_swarm(cfg, init_dir: str | None, group: PeerGroup, stop_requested: Callable[[], bool]) -> FollowResult:
    """A follower rank's whole session: the same model and objective as the leader (parameters come from it), its
    own slice of the data, then ``follow_loop`` until the leader dismisses the group. Never touches the DHT."""
    tokenizer = load_tokenizer(cfg, init_dir)
    if init_dir:
        models = load_models(init_dir)
    else:  # shapes only: the leader's parameters replace these before the first step
        models = build_models(cfg.model, len(tokenizer), tokenizer.pad_token_id or 0, seed=cfg.growth.seed)
    models.to(group.device).train()
    report = group.wait_for_setup()
    if not report.ok:
        raise UserError(f"rank 0 of this peer could not join the swarm: {report.error}")
    params = models.parameters()
    check_rank_shapes(report, params)
    seed = derive_seed(report.seed, "rank", group.info.rank)  # each rank its own data order and masks
    objective, batches = training_inputs(cfg, models, tokenizer, seed)
    if cfg.train.compile:
        compile_models(models)
    return follow_loop(params, objective, batches, step_spec(cfg.train, group.device), group, stop_requested)
