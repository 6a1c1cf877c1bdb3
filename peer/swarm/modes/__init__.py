"""The averaging modes of ``SwarmSpec.averaging``, one module each behind one protocol (``base.AveragingMode``):

- ``sync``: hivemind's default, gradients all-reduced towards ``target_batch_size`` and one optimizer step for all;
- ``diloco``: DiLoCo over hivemind, local inner steps and an outer Nesterov step on the averaged parameters, with
  the round blocking or in the background (``overlap_rounds``).

A new mode is a module here with its class, its entry in ``MODES`` below, and its name and settings in
``peer.config.SwarmSpec``; nothing outside this package tests a mode's name.
"""

from __future__ import annotations

from peer.config import SwarmSpec
from peer.errors import UserError
from peer.swarm.modes.base import AveragingMode
from peer.swarm.modes.diloco import DiLoCoMode
from peer.swarm.modes.sync import SyncMode

__all__ = ["MODES", "AveragingMode", "DiLoCoMode", "SyncMode", "averaging_mode"]

MODES: dict[str, AveragingMode] = {mode.name: mode for mode in (SyncMode(), DiLoCoMode())}
"""Every averaging mode by its ``SwarmSpec.averaging`` name (``peer.config`` lists the same names, so that a
config file with another one fails when it is read)."""


def averaging_mode(spec: SwarmSpec) -> AveragingMode:
    """The mode ``spec.averaging`` names; UserError in one line for a name no mode has."""
    mode = MODES.get(spec.averaging)
    if mode is None:
        known = ", ".join(repr(name) for name in MODES)
        raise UserError(f"swarm.averaging: {spec.averaging!r} is not an averaging mode (known: {known})")
    return mode
