"""``peer join``'s loop runs the one training step (peer.trainer.step): the gradients hivemind's optimizer reads are
clipped at ``train.clip_norm``, and the peer's record carries the clipped norm, the objective's metrics and the last
held-out evaluation's.

One real peer: a hivemind DHT with the run's validators, a real sync ``SwarmOptimizer`` over a tiny linear model,
and ``train_loop`` itself; the only addition is a wrapper around the optimizer's ``step`` that measures the
gradients at the moment hivemind takes them."""

from __future__ import annotations

import itertools

import pytest
import torch

from peer.config import PeerSettings, SwarmSpec, TrainSpec
from peer.objectives import ObjectiveOutput
from peer.run.records import LocalMetrics
from peer.swarm.averaging import build_swarm_optimizer
from peer.swarm.dht import start_dht
from peer.swarm.loop import LoopOptions, LoopParts, train_loop
from peer.swarm.metrics import fetch_metrics, make_validators
from peer.swarm.shutdown import StopSignal
from peer.trainer import make_optimizer
from peer.trainer.step import StepSpec, grad_norm

RUN = "steptest"
CLIP = 1.0


@pytest.mark.timeout(240)
def test_the_gradients_peer_join_sends_are_clipped_and_its_record_carries_the_norm_and_the_objectives_metrics():
    signing = make_validators(RUN)
    dht = start_dht(PeerSettings(host_maddrs=["/ip4/127.0.0.1/tcp/0"]), signing.validators)
    opt = None
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 1)
        params = list(model.parameters())
        factory = lambda p: make_optimizer(p, TrainSpec(optimizer="adamw", warmup_steps=0, lr=1e-3))  # noqa: E731
        spec = SwarmSpec(target_batch_size=8, matchmaking_time=1.0, averaging_timeout=5.0)
        opt = build_swarm_optimizer(dht, RUN, spec, params, factory, None, batch_size=8)
        seen: list[float] = []  # the gradients' norm each time hivemind's optimizer takes them
        original_step = opt.step

        def measured_step(*args, **kwargs):
            seen.append(grad_norm(params))
            return original_step(*args, **kwargs)

        opt.step = measured_step
        gen = torch.Generator().manual_seed(1)

        def batches():
            for _ in itertools.count():
                x = torch.randn(4, 8, generator=gen)
                yield {"x": x, "y": 100.0 * x.sum(1, keepdim=True)}

        def objective(batch: dict) -> ObjectiveOutput:  # a huge learning signal: the loss is scaled up 1e4 times
            err = model(batch["x"]) - batch["y"]
            hits = (err.abs() < 1.0).float().mean()
            return ObjectiveOutput(1e4 * err.pow(2).mean(), {"accuracy": hits.detach()})

        evaluations: list[int] = []

        def evaluate() -> dict[str, float]:  # held-out metrics of the current parameters
            evaluations.append(1)
            with torch.no_grad():
                x = torch.ones(2, 8)
                return {"loss": float((model(x) - 800.0).pow(2).mean()), "auc": float("nan")}

        step = StepSpec(grad_accum=2, clip_norm=CLIP)
        parts = LoopParts(params, objective, batches(), step=step, evaluate=evaluate, eval_every=1)
        options = LoopOptions(max_global_steps=2, metrics_every=0.0, show_status=False)
        result = train_loop(dht, RUN, signing, opt, parts, StopSignal(), options)
        assert result.local_steps >= 2 and result.samples == 8 * result.local_steps, "2 micro-batches of 4 per step"
        assert seen and max(seen) <= CLIP * (1 + 1e-4), f"hivemind took unclipped gradients: {seen}"
        record: LocalMetrics = next(iter(fetch_metrics(dht, RUN).values()))
        assert record.metrics["grad_norm"] <= CLIP * (1 + 1e-4)
        assert record.metrics["grad_norm_unclipped"] > 100 * CLIP, "the signal was huge before clipping"
        assert 0.0 <= record.metrics["accuracy"] <= 1.0, "the objective's metrics are published with the loss"
        assert record.mini_steps == result.local_steps
        assert len(evaluations) == result.local_steps, "eval_every=1: one held-out evaluation per local step"
        assert record.metrics["eval_loss"] > 0 and "eval_auc" not in record.metrics, "published when finite"
    finally:
        if opt is not None:
            opt.shutdown()
        dht.shutdown()
