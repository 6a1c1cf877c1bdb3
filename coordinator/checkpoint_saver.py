"""The checkpoint saver: every ``checkpoint_every`` global steps the coordinator pulls the averaged state from the
peers and saves it as a checkpoint (``coordinator.checkpoints``) that a swarm every peer left resumes from.

Across a mid-run growth switch (``growth.schedule``) it saves two checkpoints: the last state of the old stage, which
the peers keep serving under the old stage's keys for ``growth.switch_grace`` seconds after they grew
(``peer.swarm.stage_grace``), and then the new stage's state under its keys, in its shapes. Each checkpoint says its
stage (``training_state.json`` and the manifest), which a peer that starts from it starts in.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

import hivemind

from coordinator.checkpoints import CheckpointDir
from coordinator.deployment import CoordinatorSpec
from coordinator.store import CheckpointRow, Store
from peer.config import RunConfig, model_stages
from peer.errors import UserError
from peer.swarm.stage_keys import stage_at, stage_prefix

logger = logging.getLogger(__name__)

CARRIED_FILES = ("growth.json",)  # provenance files copied from the previous checkpoint into each new one


class CheckpointSaver:
    """Every ``checkpoint_every`` global steps, pulls the swarm's state (``load_state_from_swarm``: parameters,
    optimizer state, DiLoCo outer momentum, step) into a model of the stage's shapes and saves it as a new
    checkpoint: the HF model dir plus ``optimizer.safetensors`` and the resume fields of ``training_state.json``,
    so a swarm that every peer left resumes from it with its Adam moments, not only its weights.

    The latest checkpoint is the template because it holds exactly the run's architecture and tokenizer; pulling
    into it also means a failed pull leaves nothing half-updated on disk. After a switch the template's tokenizer
    and vocabulary go into a model of the new stage's sizes (``build_models``), as a joining peer builds it.

    At a switch (the monitor's global step is in a later stage than the latest checkpoint) a save is due at once:
    first the old stage's final state, retried until ``growth.switch_grace`` seconds after the saver saw the switch
    (the peers serve it that long), then the new stage's."""

    def __init__(self, cfg: RunConfig, spec: CoordinatorSpec, dht: hivemind.DHT, store: Store, ckpts: CheckpointDir):
        self.cfg, self.spec, self.dht, self.store, self.ckpts = cfg, spec, dht, store, ckpts
        self.stages = model_stages(cfg)
        self._switch_seen: dict[int, float] = {}  # old stage -> monotonic time the saver first saw the swarm past it

    def _swarm_stage(self) -> int:
        return stage_at(self.stages, self.store.progress().global_step)

    def due(self) -> bool:
        latest = self.ckpts.latest()
        last = latest.step if latest is not None else 0
        if latest is not None and self._swarm_stage() > latest.stage:
            return True  # a switch: the old stage's last state is served only for the grace
        return self.store.progress().global_step >= last + self.spec.checkpoint_every

    def _pre_switch_wanted(self, latest: CheckpointRow) -> bool:
        """Whether to pull the final state of ``latest``'s stage now: the swarm has left that stage, ``latest`` is
        not already at its end (the step of the next switch), and the grace in which peers serve it is not over."""
        if self._swarm_stage() <= latest.stage or latest.step >= self.stages[latest.stage + 1][0]:
            return False
        seen = self._switch_seen.setdefault(latest.stage, time.monotonic())
        if time.monotonic() - seen <= self.cfg.growth.switch_grace:
            return True
        if self._switch_seen.pop(latest.stage, None) is not None:
            logger.warning(
                "no peer served growth stage %d's final state within the switch grace (%.0f s): no checkpoint of "
                "the last state before the switch",
                latest.stage,
                self.cfg.growth.switch_grace,
            )
        return False

    def save_from_swarm(self, stop: threading.Event | None = None) -> int | None:
        """One pull-and-save; returns the saved step, or None if no peer answered, the state is not newer, or
        ``stop`` was set during the pull (Ctrl-C must not wait for a download that may never end)."""
        latest = self.ckpts.latest()
        if latest is None:
            raise UserError("no checkpoint to use as the template for the swarm's state")
        if latest.stage < len(self.stages) - 1 and self._pre_switch_wanted(latest):
            logger.info("the swarm left growth stage %d: pulling its final state", latest.stage)
            return self._pull_and_save(latest, latest.stage, stop)
        return self._pull_and_save(latest, max(latest.stage, self._swarm_stage()), stop)

    def _pull_and_save(self, latest: CheckpointRow, stage: int, stop: threading.Event | None) -> int | None:
        from transformers import AutoTokenizer

        from peer.modeling import build_models, load_models, save_models
        from peer.run.state_format import checkpoint_training_state, write_optimizer_file
        from peer.swarm.state import load_state_from_swarm

        template = self.ckpts.path(latest.name)
        models = load_models(template)
        if stage != latest.stage:  # the first checkpoint of a stage: its sizes, the template's vocabulary
            config = models.discriminator.config
            models = build_models(self.stages[stage][1], config.vocab_size, config.pad_token_id or 0)
        logger.info(
            "pulling the swarm's state for a checkpoint (growth stage %d; at most %.0f s)",
            stage,
            self.spec.state_timeout,
        )
        prefix = stage_prefix(self.cfg.run_id, stage)
        state = load_state_from_swarm(self.dht, self.cfg, models, self.spec.state_timeout, stop, prefix=prefix)
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
        training_state = {
            "samples": samples,
            "run_id": self.cfg.run_id,
            "stage": stage,
            **checkpoint_training_state(state),
        }
        self.ckpts.save(state.step, write, training_state, store=self.store)
        return state.step
