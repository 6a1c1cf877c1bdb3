"""The names both checkpoint layouts share: the coordinator's (``coordinator.checkpoints``, pulled from the swarm)
and the trainer's (``peer.trainer.checkpoint``, ``peer train``).

Why one home: a checkpoint is a directory ``ckpt-<step:06d>`` holding ``training_state.json`` whichever process
wrote it, and the readers (a peer starting from the coordinator's checkpoint, ``peer train`` resuming, the
coordinator re-listing its own) find checkpoints and their step by these names, so no writer spells them alone.
"""

from __future__ import annotations

import re

TRAINING_STATE_FILE = "training_state.json"  # {"step", "samples", "run_id"} (+ the swarm's resume fields)
GROWTH_RECORD = "growth.json"  # how the model was grown (``peer grow``), carried into every checkpoint
GENERATOR_SUBDIR = "generator"  # ELECTRA's generator, a model dir of its own inside the discriminator's
_NAME_RE = re.compile(r"^ckpt-(\d{6,})$")


def checkpoint_name(step: int) -> str:
    if step < 0:
        raise ValueError(f"a checkpoint step must be >= 0, got {step}")
    return f"ckpt-{step:06d}"


def parse_step(name: str) -> int | None:
    """The step of a checkpoint dir name, or None for anything that is not ``ckpt-<digits>``."""
    match = _NAME_RE.match(name)
    return int(match.group(1)) if match else None
