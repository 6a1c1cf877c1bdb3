"""Sync mode's loss trajectory without the network: ``bench/swarm.py --model electra --sync_reference``.

Why: sync fp16 is the baseline the issue compares the low-bandwidth modes with at equal samples, after several
DiLoCo rounds, and on this 2-core machine at 100 mbit sync trains 3-4 samples/s, so reaching the samples of a few
H = 200 rounds (thousands) takes most of an hour per run. What sync computes does not depend on the network: every
global step, each peer's clipped gradient of its own batches, averaged (weighted by samples; equal batches here),
sent and returned in fp16, then one AdamW step that every peer takes (``peer.swarm.modes.sync``). This runs exactly
that in one process, on the peers' own training inputs (``training_inputs`` with each peer's seed, as the bench's
workers build them) and the real step (``peer.trainer.step.TrainStep``: the finite guard, clipping), with the
optimizer a peer hands hivemind (``run_optimizer_factories`` over ``param_groups``, initialised by hivemind's
zero-gradient step), so its held-out curve is sync's at any number of samples. What it leaves out: a network
round that fails or leaves parts out (each peer then steps on its own gradient there) and the peers' unequal
contributions to a global step when one is slower. The netns sync/fp16 row measures those, and its bytes, over the
samples it reaches; the comparison puts the two side by side where both have points (``electra_runs.comparisons``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
from hivemind.compression import CompressionInfo

from peer.swarm.codecs import CODECS, PSEUDO_GRADIENT_ONLY, decode_part, make_compression


def _through(codec) -> Callable[[torch.Tensor], torch.Tensor]:
    """``t`` as a peer receives it after ``codec`` (``peer.swarm.codecs``, what sync's all-reduce sends)."""

    def roundtrip(t: torch.Tensor) -> torch.Tensor:
        return decode_part(codec.compress(t, CompressionInfo.from_tensor(t), allow_inplace=False))

    return roundtrip


def sync_reference(opts: argparse.Namespace, model_dir: Path, peers: int, codec: str = "fp16") -> dict:
    """``opts.local_steps`` global steps of ``peers`` peers' sync training from checkpoint 0 in ``model_dir``; the
    held-out loss at ``opts.eval_at`` local steps and at the end. Returns a row in ``electra_row``'s shape (the
    fields a network gives left out), label ``sync-reference``."""
    from hivemind.optim.state_averager import initialize_optimizer_state_
    from transformers import AutoTokenizer

    from bench.swarmlib.electra import EVAL_SEED, bench_config
    from peer.data import build_heldout_batches
    from peer.modeling import load_models
    from peer.objectives import build_objective
    from peer.swarm.training_inputs import training_inputs
    from peer.trainer import step_spec
    from peer.trainer.optim import param_groups
    from peer.trainer.recipe import run_optimizer_factories
    from peer.trainer.step import TrainStep

    if codec in PSEUDO_GRADIENT_ONLY or codec not in CODECS:
        raise ValueError(f"the sync reference sends what sync may send (fp16 or none, ...), not {codec!r}")
    torch.set_num_threads(1)
    torch.manual_seed(0)  # dropout draws from the global generator: as every bench worker seeds it
    cfg = bench_config(opts)
    models = load_models(model_dir).train()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    params = list(models.parameters())  # what the workers hand their optimizer (ElectraParts.params)
    spec = step_spec(cfg.train, torch.device("cpu"))
    # each peer's objective (its own masking generator) and batches, on the one shared model
    streams = []
    for seed in range(peers):
        objective, batches = training_inputs(cfg, models, tokenizer, seed)
        streams.append((TrainStep(objective, params, spec), batches))
    heldout = build_heldout_batches(cfg.data, tokenizer, cfg.train.batch_size, cfg.objective.name, opts.eval_batches)
    evaluator = build_objective(cfg, models, tokenizer.mask_token_id, seed=EVAL_SEED)
    optimizer_factory, scheduler_factory = run_optimizer_factories(cfg)
    optimizer = optimizer_factory(param_groups(params, cfg.train.weight_decay))
    scheduler = scheduler_factory(optimizer)
    initialize_optimizer_state_(optimizer)  # hivemind's zero-gradient step, as on every peer
    cast = _through(make_compression(codec))
    at = set(opts.eval_at)
    curve: list[dict] = []
    t0 = time.perf_counter()

    def point(steps: int) -> dict:
        metrics = evaluator.evaluate(heldout)
        return dict(
            local_steps=steps,
            samples=steps * cfg.train.batch_size,
            loss=metrics.get("loss", float("nan")),
            mlm_loss=metrics.get("mlm_loss", float("nan")),
            disc_loss=metrics.get("disc_loss", float("nan")),
            tx_bytes=0,
            seconds=time.perf_counter() - t0,
        )

    curve.append(point(0))
    for step in range(1, opts.local_steps + 1):
        total = [torch.zeros_like(p) for p in params]
        healthy = 0
        for train_step, batches in streams:
            optimizer.zero_grad(set_to_none=True)
            computed = train_step.backward(batches)
            if not (computed.healthy and train_step.unscale(computed)):
                continue  # a peer with a non-finite step sends nothing (peer.swarm.loop)
            train_step.clip()
            healthy += 1
            for acc, p in zip(total, params, strict=True):
                if p.grad is not None:
                    acc.add_(cast(p.grad))
        if healthy:
            for acc, p in zip(total, params, strict=True):
                p.grad = cast(acc / healthy)
            optimizer.step()
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step in at and step != opts.local_steps:
            curve.append(point(step))
    final = point(opts.local_steps)
    return dict(
        label="sync-reference",
        mode="reference",
        codec=codec,
        inner_steps=None,
        peers=peers,
        parameters=sum(p.numel() for p in params),
        samples=opts.local_steps * cfg.train.batch_size * peers,
        local_steps=[opts.local_steps] * peers,
        global_steps=opts.local_steps,
        seconds=final["seconds"],
        final_loss=final["loss"],
        final_mlm_loss=final["mlm_loss"],
        final_disc_loss=final["disc_loss"],
        initial_loss=curve[0]["loss"],
        curve=curve,
    )
