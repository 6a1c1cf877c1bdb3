"""``build_swarm_optimizer``: the peer's optimizer for its run's averaging mode (``peer.swarm.modes``), with what
every mode shares: the averagers' guard (who may average with us, robust aggregation), timeouts, progress reports.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import hivemind
import torch

from peer.config import SwarmSpec
from peer.errors import UserError
from peer.swarm.gate import OpenGate, PeerGate
from peer.swarm.modes import averaging_mode
from peer.swarm.modes.base import OptimizerFactory, SchedulerFactory
from peer.swarm.overrides.averagers import AveragerKinds
from peer.swarm.overrides.guard import AveragerGuard
from peer.swarm.robust import ClipSettings
from peer.swarm.round_evidence import OutcomeChannel
from peer.swarm.swarm_optimizer import SwarmOptimizer

logger = logging.getLogger(__name__)


def robust_enabled(spec: SwarmSpec, open_run: bool) -> bool:
    """``SwarmSpec.robust_averaging``, where None means on for an open run (anyone may join) and off for a private
    run (every peer holds an allowlisted token), unless set."""
    return open_run if spec.robust_averaging is None else spec.robust_averaging


def build_swarm_optimizer(
    dht: hivemind.DHT,
    run_id: str,
    spec: SwarmSpec,
    params: Sequence[torch.nn.Parameter] | Sequence[dict],
    optimizer_factory: OptimizerFactory,
    scheduler_factory: SchedulerFactory | None,
    batch_size: int,
    verbose: bool = False,
    gate: PeerGate | None = None,
    open_run: bool = True,
    client_mode: bool = False,
    kinds: AveragerKinds | None = None,
) -> SwarmOptimizer:
    """The peer's optimizer for ``spec.averaging`` (its ``AveragingMode`` builds it from the arguments every mode
    shares); ``batch_size`` = samples per local step (all DDP ranks).

    ``params`` may be param groups (e.g. decay / no-decay): hivemind hands the optimizer factory its offloaded
    copies as groups, so the grouping must be decided here, not inside the factory.

    ``gate`` decides who may average with this peer (None: everyone); ``open_run`` resolves the robust switch (see
    ``robust_enabled``); ``client_mode`` is the peer's own (``PeerSettings.client_mode``: its averagers accept no
    incoming connections); ``kinds`` substitutes averager classes (the fault-injection bench's attackers)."""
    mode = averaging_mode(spec)
    params = list(params)
    if not spec.progress_report_interval >= 0:
        raise UserError(f"need swarm.progress_report_interval >= 0, got {spec.progress_report_interval}")
    if not spec.progress_refresh_max >= 0.5:  # hivemind's min_refresh_period
        raise UserError(f"need swarm.progress_refresh_max >= 0.5 (seconds), got {spec.progress_refresh_max}")
    if not spec.clip_factor > 0 or spec.ban_after < 1:
        got = f"{spec.clip_factor}, {spec.ban_after}"
        raise UserError(f"need swarm.clip_factor > 0 and swarm.ban_after >= 1, got {got}")
    if spec.chunk_timeout is not None and not spec.chunk_timeout > 0:
        raise UserError(f"need swarm.chunk_timeout > 0 (seconds) or null, got {spec.chunk_timeout}")
    if not spec.local_ban_seconds > 0:
        raise UserError(f"need swarm.local_ban_seconds > 0, got {spec.local_ban_seconds}")
    mode.check(spec)
    robust = robust_enabled(spec, open_run)
    outcomes = OutcomeChannel() if robust else None
    guard = AveragerGuard(
        gate=gate or OpenGate(), robust=robust, clip=ClipSettings(clip_factor=spec.clip_factor), channel=outcomes
    )
    shared = dict(
        guard=guard,
        kinds=kinds or AveragerKinds(),
        dht=dht,
        run_id=run_id,
        params=params,
        optimizer=optimizer_factory,
        scheduler=scheduler_factory,
        batch_size_per_step=batch_size,
        matchmaking_time=spec.matchmaking_time,
        averaging_timeout=spec.averaging_timeout,
        next_chunk_timeout=spec.chunk_timeout,
        load_state_timeout=spec.load_state_timeout,
        client_mode=client_mode,
        verbose=verbose,
        progress_report_interval=spec.progress_report_interval,
        tracker_opts=dict(
            max_refresh_period=spec.progress_refresh_max, default_refresh_period=min(3.0, spec.progress_refresh_max)
        ),
    )
    return mode.build(spec, shared, outcomes)
