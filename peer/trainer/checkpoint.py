"""Trainer checkpoints: a model dir (``peer.modeling`` layout, loadable by plain ``transformers``) plus everything
needed to continue the run bit for bit: optimizer, scheduler, the objective's masking RNG, torch's global RNG
(dropout) and how many batches were consumed.

Layout: ``<out_dir>/checkpoints/ckpt-<step:06d>/`` with the model files, ``training_state.json`` ({"step",
"samples", "run_id"}, the coordinator's format) and ``trainer_state.pt``. Written into ``ckpt-….tmp`` and renamed
when complete, so a crash mid-save never leaves a checkpoint that looks valid; the newest complete one wins.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from peer.errors import UserError
from peer.modeling import PretrainingModels, load_models, save_models
from peer.run.checkpoint_layout import TRAINING_STATE_FILE, checkpoint_name, parse_step

logger = logging.getLogger(__name__)

CHECKPOINTS_SUBDIR = "checkpoints"
TRAINER_STATE_FILE = "trainer_state.pt"


@dataclass
class TrainerState:
    """Counters of a run: optimizer steps taken, samples seen, micro-batches drawn from the data iterator."""

    step: int = 0
    samples: int = 0
    batches_consumed: int = 0


def checkpoint_dirs(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``out_dir``, oldest first."""
    root = Path(out_dir) / CHECKPOINTS_SUBDIR
    if not root.is_dir():
        return []
    found = [(step, p) for p in root.iterdir() if (step := parse_step(p.name)) is not None and p.is_dir()]
    return [p for _, p in sorted(found) if (p / TRAINER_STATE_FILE).is_file()]


def save_checkpoint(
    out_dir: str | Path,
    run_id: str,
    state: TrainerState,
    models: PretrainingModels,
    optimizer: torch.optim.Optimizer,
    scheduler,
    objective,
    tokenizer=None,
    keep: int = 3,
) -> Path:
    """Writes checkpoint ``state.step`` atomically and keeps the newest ``keep``; returns its path."""
    root = Path(out_dir) / CHECKPOINTS_SUBDIR
    final = root / checkpoint_name(state.step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_models(models, tmp, tokenizer=tokenizer)
    (tmp / TRAINING_STATE_FILE).write_text(json.dumps({"step": state.step, "samples": state.samples, "run_id": run_id}))
    trainer_state = {
        "step": state.step,
        "samples": state.samples,
        "batches_consumed": state.batches_consumed,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "objective": objective.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        trainer_state["cuda_rng"] = torch.cuda.get_rng_state()
    torch.save(trainer_state, tmp / TRAINER_STATE_FILE)
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in checkpoint_dirs(out_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("saved checkpoint %s", final)
    return final


def restore_checkpoint(
    path: str | Path, models: PretrainingModels, optimizer: torch.optim.Optimizer, scheduler, objective
) -> TrainerState:
    """Loads a checkpoint written by ``save_checkpoint`` into live objects (models in place, on their device)."""
    path = Path(path)
    try:
        saved = load_models(path)
        trainer_state = torch.load(path / TRAINER_STATE_FILE, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as e:
        raise UserError(f"cannot resume from {path}: {str(e).splitlines()[0]}") from None
    for live, disk in zip(models.modules(), saved.modules(), strict=True):
        live.load_state_dict(disk.state_dict())
    optimizer.load_state_dict(trainer_state["optimizer"])
    scheduler.load_state_dict(trainer_state["scheduler"])
    objective.load_state_dict(trainer_state["objective"])
    torch.set_rng_state(trainer_state["torch_rng"])
    if "cuda_rng" in trainer_state and torch.cuda.is_available():
        torch.cuda.set_rng_state(trainer_state["cuda_rng"])
    return TrainerState(trainer_state["step"], trainer_state["samples"], trainer_state["batches_consumed"])
