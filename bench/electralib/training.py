"""The two training runs of the comparison, on the same data order, optimizer and schedule: ELECTRA through
``peer.objectives`` and a BERT-style MLM encoder of the discriminator's size; each returns its encoder (eval mode)
and what its training did."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm
from transformers import ElectraForMaskedLM

from peer.config import RunConfig, TrainSpec
from peer.modeling import build_models, electra_configs
from peer.objectives import build_objective
from peer.objectives.electra import generator_logits_at
from peer.objectives.losses import masked_lm_loss
from peer.objectives.masking import candidate_mask, mask_inputs, sample_token_positions
from peer.trainer import make_optimizer, make_scheduler


@dataclass
class TrainedEncoder:
    name: str
    steps: int
    seconds: float
    last_losses: dict[str, float]  # means over the last 10 % of steps


def _train_loop(name: str, params, step_fn, batches, steps: int, spec: TrainSpec) -> tuple[float, dict[str, float]]:
    """AdamW + warmup/decay + clipping around ``step_fn(batch) -> (loss, metrics)``; returns seconds and the late
    training metrics."""
    opt = make_optimizer(params, spec)
    sched = make_scheduler(opt, spec)
    tail = max(1, steps // 10)
    late: dict[str, list[float]] = {}
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=name, unit="step", dynamic_ncols=True, mininterval=5)
    for i in bar:
        loss, metrics = step_fn(next(batches))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, spec.clip_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(metrics["loss"]):
            raise RuntimeError(f"{name}: non-finite loss at step {i}")
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", refresh=False)
        if i >= steps - tail:
            for k, v in metrics.items():
                late.setdefault(k, []).append(v)
    return time.perf_counter() - start, {k: statistics.fmean(v) for k, v in late.items()}


def train_electra(cfg: RunConfig, vocab: int, batches, steps: int, seed: int, mask_id: int, device: torch.device):
    models = build_models(cfg.model, vocab, seed=seed).to(device).train()
    objective = build_objective(cfg, models, mask_token_id=mask_id, seed=seed)

    def step(batch):
        out = objective(batch)
        return out.loss, out.metrics

    seconds, late = _train_loop("ELECTRA", models.parameters(), step, batches, steps, cfg.train)
    return models.discriminator.electra.eval(), TrainedEncoder("ELECTRA", steps, seconds, late)


def train_mlm(cfg: RunConfig, vocab: int, batches, steps: int, seed: int, mask_id: int, device: torch.device):
    torch.manual_seed(seed)
    model = ElectraForMaskedLM(electra_configs(cfg.model, vocab)[0]).to(device).train()
    rng = torch.Generator(device=device).manual_seed(seed)

    def step(batch):
        batch = {k: v.to(device) for k, v in batch.items()}
        pos = sample_token_positions(candidate_mask(batch), cfg.objective.mask_prob, rng)
        corrupted = mask_inputs(batch["input_ids"], pos, mask_id, rng, 0.8, 0.1, vocab_size=vocab)
        logits = generator_logits_at(model, batch, corrupted, pos.index)
        labels = batch["input_ids"].gather(1, pos.index)
        loss = masked_lm_loss(logits, labels, pos.weight)
        with torch.no_grad():
            acc = ((logits.argmax(-1) == labels).float() * pos.weight).sum() / pos.weight.sum()
        return loss, {"loss": loss.item(), "mlm_accuracy": acc.item()}

    seconds, late = _train_loop("MLM", list(model.parameters()), step, batches, steps, cfg.train)
    return model.electra.eval(), TrainedEncoder("MLM", steps, seconds, late)
