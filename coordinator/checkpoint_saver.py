"""The checkpoint saver: every ``checkpoint_every`` global steps the coordinator pulls the averaged state from the
peers and saves it as a checkpoint (``coordinator.checkpoints``) that a swarm every peer left resumes from.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

import hivemind

from coordinator.checkpoints import CheckpointDir
from coordinator.deployment import CoordinatorSpec
from coordinator.store import Store
from peer.config import RunConfig
from peer.errors import UserError

logger = logging.getLogger(__name__)

CARRIED_FILES = ("growth.json",)  # provenance files copied from the previous checkpoint into each new one


class CheckpointSaver:
    """Every ``checkpoint_every`` global steps, pulls the swarm's state (``load_state_from_swarm``: parameters,
    optimizer state, DiLoCo outer momentum, step) into a model loaded from the latest checkpoint and saves it as a
    new checkpoint: the HF model dir plus ``optimizer.safetensors`` and the resume fields of ``training_state.json``,
    so a swarm that every peer left resumes from it with its Adam moments, not only its weights.

    The latest checkpoint is the template because it holds exactly the run's architecture and tokenizer; pulling
    into it also means a failed pull leaves nothing half-updated on disk."""

    def __init__(self, cfg: RunConfig, spec: CoordinatorSpec, dht: hivemind.DHT, store: Store, ckpts: CheckpointDir):
        self.cfg, self.spec, self.dht, self.store, self.ckpts = cfg, spec, dht, store, ckpts

    def due(self) -> bool:
        latest = self.ckpts.latest()
        last = latest.step if latest is not None else 0
        return self.store.progress().global_step >= last + self.spec.checkpoint_every

    def save_from_swarm(self, stop: threading.Event | None = None) -> int | None:
        """One pull-and-save; returns the saved step, or None if no peer answered, the state is not newer, or
        ``stop`` was set during the pull (Ctrl-C must not wait for a download that may never end)."""
        from transformers import AutoTokenizer

        from peer.modeling import load_models, save_models
        from peer.run.state_format import checkpoint_training_state, write_optimizer_file
        from peer.swarm.state import load_state_from_swarm

        latest = self.ckpts.latest()
        if latest is None:
            raise UserError("no checkpoint to use as the template for the swarm's state")
        template = self.ckpts.path(latest.name)
        models = load_models(template)
        logger.info("pulling the swarm's state for a checkpoint (at most %.0f s)", self.spec.state_timeout)
        state = load_state_from_swarm(self.dht, self.cfg, models, timeout=self.spec.state_timeout, stop=stop)
        if state is None:
            if stop is not None and stop.is_set():
                logger.info("stopping: abandoned the pull of the swarm's state")
            else:
                logger.warning("no peer sent its state within %.0f s; will retry", self.spec.state_timeout)
            return None
        if state.step <= latest.step:
            logger.info("swarm state is at step %d, not newer than checkpoint %s", state.step, latest.name)
            return None
        tokenizer = AutoTokenizer.from_pretrained(template)

        def write(out: Path) -> None:
            save_models(models, out, tokenizer)
            write_optimizer_file(state, out)
            for name in CARRIED_FILES:
                if (template / name).is_file():
                    shutil.copyfile(template / name, out / name)

        samples = self.store.progress().samples_total
        training_state = {"samples": samples, "run_id": self.cfg.run_id, **checkpoint_training_state(state)}
        self.ckpts.save(state.step, write, training_state, store=self.store)
        return state.step
