"""``python -m peer train -c run.yaml``: the single-process trainer (the swarm's step, without the swarm).

Builds, in order: the tokenizer (the source model's, via ``peer.growth.resolve_source``), the initial models
(``train.init``: grown from the source, random, or a model dir), the data (``peer.data``), the objective, and runs
``peer.trainer.train`` with a progress bar on a terminal (elsewhere a log line every ``train.log_every`` steps);
resumes from ``<out_dir>/checkpoints`` when there is one.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from tqdm import tqdm

from peer.cli._options import add_overrides
from peer.config import RunConfig, load_config
from peer.data import build_heldout_batches, build_train_batches, check_seq_len
from peer.data.sources import open_source
from peer.errors import UserError
from peer.logs import progress_on
from peer.modeling import PretrainingModels, build_models, load_models
from peer.objectives import build_objective
from peer.trainer import StepReport, checkpoint_dirs, compile_models, resolve_device, step_spec, train
from peer.trainer.hardware import StartupFacts, startup_line

logger = logging.getLogger(__name__)

INITIAL_SUBDIR = "initial"


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train the run's model in this process (no swarm)")
    p.add_argument("-c", "--config", help="run config YAML")
    add_overrides(p, "train.lr=1e-4")
    p.add_argument("--max_steps", type=int, help="stop after this many steps (the schedule still uses total_steps)")
    p.add_argument("--no_resume", action="store_true", help="start over even if out_dir holds checkpoints")
    p.set_defaults(func=run)


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load a tokenizer from {path}: {str(e).splitlines()[0]}") from None


def initial_models(cfg: RunConfig, resume: bool) -> tuple[PretrainingModels, object]:
    """The models to start from (or to restore a checkpoint into) and the tokenizer that goes with them."""
    from peer.growth import resolve_source

    existing = checkpoint_dirs(cfg.train.out_dir) if resume else []
    init = cfg.train.init
    if existing:
        model_dir = existing[-1]
    elif init == "random":
        tokenizer = load_tokenizer(resolve_source(cfg.growth.source))
        return build_models(cfg.model, len(tokenizer), tokenizer.pad_token_id or 0, seed=cfg.growth.seed), tokenizer
    elif init == "grow":
        model_dir = Path(cfg.train.out_dir) / INITIAL_SUBDIR
        if not (model_dir / "config.json").is_file():
            from peer.growth.artifact import grow_to_dir

            logger.info("growing %s into %s", cfg.growth.source, model_dir)
            grow_to_dir(cfg.growth.source, cfg.model, cfg.growth, model_dir)
    else:
        model_dir = Path(init)
        if not model_dir.is_dir():
            raise UserError(f"train.init: no model dir at {model_dir} (use grow, random or a model dir)")
    models = load_models(model_dir)
    has_tokenizer = (model_dir / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(model_dir if has_tokenizer else resolve_source(cfg.growth.source))
    return models, tokenizer


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if cfg.objective.name != cfg.model.architecture:
        raise UserError(f"objective {cfg.objective.name!r} does not fit model {cfg.model.architecture!r}")
    device = resolve_device(cfg.train)
    # Bad input fails before anything is grown or written: the corpus must open, the sequence fit the positions.
    open_source(cfg.data)
    check_seq_len(cfg.data, cfg.model.max_position_embeddings)
    models, tokenizer = initial_models(cfg, resume=not args.no_resume)
    check_seq_len(cfg.data, models.discriminator.config.max_position_embeddings)
    bsz = cfg.train.batch_size
    train_batches = build_train_batches(
        cfg.data, tokenizer, bsz, cfg.objective.name, cfg.data.seed, sop_prob=cfg.objective.sop_prob
    )
    heldout = build_heldout_batches(cfg.data, tokenizer, bsz, cfg.objective.name, cfg.train.eval_batches)
    models.to(device)
    if cfg.train.compile:
        compile_models(models)
    objective = build_objective(cfg, models, mask_token_id=tokenizer.mask_token_id)
    stop = min(cfg.train.total_steps, args.max_steps) if args.max_steps else cfg.train.total_steps
    facts = StartupFacts(
        model=f"{cfg.model.architecture} {cfg.model.hidden_size}x{cfg.model.num_layers}",
        parameters=sum(p.numel() for p in models.parameters()),
        device=device,
        precision=step_spec(cfg.train, device).precision,
        micro_batch=bsz,
        grad_accum=cfg.train.grad_accum,
        averaging="none (one process)",
    )
    logger.info("%s; %d steps of %d-token sequences", startup_line(facts), stop, cfg.data.seq_len)
    show_bar = progress_on()
    bar = tqdm(total=stop, desc="train", unit="step", dynamic_ncols=True, disable=not show_bar)
    meter = RateMeter()

    def on_step(report: StepReport) -> None:
        loss = report.metrics.get("loss", float("nan"))
        if not show_bar:
            log_progress(report, stop, loss)
            return
        if bar.n == 0 and report.step > 1:
            bar.update(report.step - 1)  # resumed
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{report.lr:.2e}")
        if report.eval_metrics:
            bar.write(f"step {report.step} held-out: " + _fmt(report.eval_metrics))
        if report.checkpoint:
            bar.write(f"step {report.step} checkpoint: {report.checkpoint}")

    def log_progress(report: StepReport, stop: int, loss: float) -> None:
        """Without a bar (no terminal): a line every ``train.log_every`` steps and the last; held-out results are
        logged by ``peer.trainer.train`` itself."""
        every = cfg.train.log_every
        if report.checkpoint:
            logger.info("step %d checkpoint: %s", report.step, report.checkpoint)
        if every <= 0 or (report.step % every and report.step != stop):
            return
        rate = meter.update(report.samples)
        logger.info(
            "step %d/%d: loss %.4f | lr %.2e | grad norm %.3g | %s samples/s",
            report.step,
            stop,
            loss,
            report.lr,
            report.grad_norm,
            "-" if rate is None else f"{rate:.1f}",
        )

    t0 = time.perf_counter()
    try:
        result = train(
            cfg,
            models,
            objective,
            train_batches,
            heldout,
            tokenizer=tokenizer,
            resume=not args.no_resume,
            max_steps=args.max_steps,
            on_step=on_step,
            grow_stage=stage_growth(cfg),
        )
    finally:
        bar.close()
    resumed = f", resumed from {result.resumed_from}" if result.resumed_from else ""
    print(
        f"done: step {result.state.step}, {result.state.samples} samples in {time.perf_counter() - t0:.1f} s "
        f"({result.samples_per_second:.1f} sequences/s){resumed}"
    )
    if result.last_metrics:
        print("last train: " + _fmt(result.last_metrics))
    if result.eval_metrics:
        print("held-out:   " + _fmt(result.eval_metrics))
    for switch in result.switches:
        held = switch.heldout_before.get("loss"), switch.heldout_after.get("loss")
        loss = f", held-out loss {held[0]:.6g} -> {held[1]:.6g}" if None not in held else ""
        print(f"grew at step {switch.step}: {switch.before} -> {switch.after} (hidden x heads x ffn x layers){loss}")
    if result.skipped_steps:
        print(f"skipped {result.skipped_steps} non-finite steps")
    if result.checkpoints:
        print(f"latest checkpoint: {result.checkpoints[-1]}")
    return 0


def stage_growth(cfg: RunConfig):
    """The growth a run's schedule switches with (None without a schedule): exact width, ``growth.depth_method``."""
    if not cfg.growth.schedule:
        return None
    from peer.growth.midrun import grow_stage

    return partial(grow_stage, depth_method=cfg.growth.depth_method)


@dataclass
class RateMeter:
    """Samples per second between two progress lines (None at the first: no interval yet)."""

    samples: int | None = None
    time: float = 0.0

    def update(self, samples: int) -> float | None:
        now = time.perf_counter()
        rate = None if self.samples is None else (samples - self.samples) / max(now - self.time, 1e-9)
        self.samples, self.time = samples, now
        return rate


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
