"""What a swarm peer trains on: the run's tokenizer, and the objective's loss with this process's batches.

Shared by a peer (``peer.swarm.session``) and the follower ranks of a multi-GPU peer (``peer.swarm.follower``),
which differ only in their seeds; its own module so that neither imports the other."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from transformers import AutoTokenizer

from peer.config import RunConfig
from peer.data import build_train_batches
from peer.errors import UserError
from peer.growth import resolve_source
from peer.modeling import PretrainingModels
from peer.objectives import build_objective
from peer.trainer import autocast_dtype


def load_tokenizer(cfg: RunConfig, init_dir: str | None):
    source = Path(init_dir) if init_dir else resolve_source(cfg.growth.source)
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the tokenizer from {source}: {str(e).splitlines()[0]}") from None


def training_inputs(
    cfg: RunConfig, models: PretrainingModels, tokenizer, seed: int, device: torch.device
) -> tuple[Callable[[dict], torch.Tensor], Iterator[dict]]:
    """The objective's loss of a batch and this process's batches (order and masking seeded by ``seed``); shared by
    a peer and the follower ranks of a multi-GPU peer, which differ only in their seeds."""
    objective = build_objective(cfg, models, tokenizer.mask_token_id, seed=seed)
    batches = build_train_batches(
        cfg.data,
        tokenizer,
        cfg.train.batch_size,
        cfg.objective.name,
        shuffle_seed=seed,
        sop_prob=cfg.objective.sop_prob,
    )
    dtype = autocast_dtype(cfg.train, device)

    def loss_fn(batch: dict) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            return objective(batch).loss

    return loss_fn, batches
