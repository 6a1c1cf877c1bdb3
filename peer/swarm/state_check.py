"""Checks on a state downloaded from another peer, before it replaces ours.

Why: a donor is just another volunteer. Robust averaging bounds what one peer can do to a round, but a state
download copies one peer's tensors wholesale: a broken or hostile donor that serves NaN parameters would hand them to
every joiner, to every peer catching up after a missed round, and to the coordinator's next checkpoint. Two checks,
both cheap next to the download itself:

- every floating-point tensor (parameters, outer momentum, optimizer statistics) is finite: always;
- for a peer that already holds the swarm's state (catching up after a missed round), the donor's parameters are
  close to ours: their L2 distance is at most ``max_jump`` times our parameters' norm. A missed round moves
  parameters by one outer step, a few percent of their norm for a trained model (but up to 0.65x in the first
  rounds of the tiny test model of tests/peer/swarm/test_swarm_peers.py, which a 0.5 limit refused); a sign flip
  is 2x and a x1000 scaling 1000x.
  A joiner has no state of its own to compare with, so it gets the first check only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

MAX_CATCH_UP_JUMP = 1.0  # relative L2 distance a catch-up download may move our parameters


def first_non_finite(tensors: Sequence[torch.Tensor]) -> int | None:
    """Index of the first floating-point tensor with a NaN or an infinity; None if all are finite."""
    for i, tensor in enumerate(tensors):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return i
    return None


def missing_tensors(metadata: object, tensors: Sequence[torch.Tensor], num_leading: int) -> int:
    """How many tensors a download lacks: ``num_leading`` (parameters + extra tensors) come first, then every
    optimizer tensor that hivemind's ``optimizer_metadata`` points at (``{"type": "tensor", "index": i}``).

    Why: a state stream that ends early (a p2p stream cut under load) arrives without an error, just short. Decoded,
    it read as a malformed state and the joiner exited (the peer_kill scenario: index 238 past the
    end); a short download is a failed attempt to retry, not a config error."""
    entries = metadata.get("optimizer_metadata") if isinstance(metadata, dict) else None
    indices = [
        e["index"]
        for e in entries or []
        if isinstance(e, dict) and e.get("type") == "tensor" and isinstance(e.get("index"), int)
    ]
    expected = num_leading + (max(indices) + 1 if indices else 0)
    return max(0, expected - len(tensors))


def relative_jump(new: Sequence[torch.Tensor], own: Sequence[torch.Tensor]) -> float:
    """||new - own|| / ||own|| over all tensors together (inf when the shapes differ)."""
    if len(new) != len(own) or any(n.shape != o.shape for n, o in zip(new, own, strict=True)):
        return math.inf
    distance = sum(float((n.float() - o.detach().float().cpu()).pow(2).sum()) for n, o in zip(new, own, strict=True))
    norm = sum(float(o.detach().float().pow(2).sum()) for o in own)
    return math.sqrt(distance) / max(math.sqrt(norm), 1e-12)


def state_problem(
    tensors: Sequence[torch.Tensor],
    own_params: Sequence[torch.Tensor] | None = None,
    max_jump: float = MAX_CATCH_UP_JUMP,
) -> str | None:
    """Why the downloaded ``tensors`` (parameters first) must not be loaded, or None. ``own_params``: this peer's
    current parameters, for the distance check (None: a joiner, finite check only)."""
    bad = first_non_finite(tensors)
    if bad is not None:
        return f"tensor {bad} of the downloaded state is not finite"
    if own_params is not None:
        jump = relative_jump(tensors[: len(own_params)], own_params)
        if jump > max_jump:
            return f"the downloaded parameters are {jump:.3g}x our norm away from ours (at most {max_jump:g})"
    return None
