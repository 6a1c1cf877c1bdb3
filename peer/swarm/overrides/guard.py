"""The gate and robust reduction every averager of a peer applies (``GuardedAveragerMixin``, configured by
``AveragerGuard``).

Replaces (hivemind 1.1.12): see ``GuardedAveragerMixin``. What changes against hivemind's averager, per round:
- the gate is asked on every incoming ``rpc_join_group`` / ``rpc_aggregate_part`` / ``rpc_download_state``; a
  refused peer gets hivemind's refusal (a rejection code, an empty state stream), and if it is already in our group
  it is dropped from our reducer at once (hivemind's own ``_ban_sender`` path) and our parts it should reduce are
  kept local (hivemind's ``register_failed_reducer`` path) instead of being sent to it;
- with robust averaging on, our parts are reduced by ``CenteredClipReducer`` and the averaged result we get back is
  checked: a non-finite result for a tensor leaves our local tensor (gradient / parameters) as it was this round;
  and the round is applied only if the average's norm over all tensors is within
  ``ClipSettings.round_norm_ratio`` × ours (see ``RoundNormCheck``): the guard of groups with two usable senders,
  where the reducer takes the plain mean.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import AsyncIterator  # noqa: UP035 - hivemind's ServicerBase only recognises typing's alias for streams

import torch
from hivemind.averaging.allreduce import AveragingMode
from hivemind.averaging.group_info import GroupInfo
from hivemind.p2p import P2PContext
from hivemind.proto import averaging_pb2
from hivemind.utils.asyncio import as_aiter, azip
from hivemind.utils.timed_storage import get_dht_time

from peer.memory import map_large_allocations, release_free_memory, start_memory_trace
from peer.swarm.gate import OpenGate, PeerGate
from peer.swarm.overrides.allreduce import GatedAllReduceRunner
from peer.swarm.robust import ClipSettings, Outcome, RoundNormCheck
from peer.swarm.round_evidence import STATE, EvidenceGrace, OutcomeChannel, RoundOutcomes

logger = logging.getLogger(__name__)


@dataclass
class AveragerGuard:
    """What both averagers of a peer share: the gate, the robust switch and settings, where outcomes go."""

    gate: PeerGate = field(default_factory=OpenGate)
    robust: bool = True
    clip: ClipSettings = field(default_factory=ClipSettings)
    channel: OutcomeChannel | None = None


class GuardedAveragerMixin:
    """The gate and robust reduction for any ``DecentralizedAverager`` subclass (listed first in the bases).

    ``_guard`` must be set before hivemind's ``__init__`` starts the averager process, hence the keyword-only
    constructor argument consumed here."""

    outcome_kind: str = STATE

    def __init__(self, *args, guard: AveragerGuard | None = None, **kwargs):
        self._guard = guard or AveragerGuard()
        self._state_grace = EvidenceGrace(self._guard.clip.state_grace_rounds)  # counted in the averager's process
        super().__init__(*args, **kwargs)

    @classmethod
    def _get_handle_name(cls, namespace: str | None, method_name: str) -> str:
        """RPC names stay hivemind's (``<prefix>::TrainingStateAverager.rpc_download_state``): hivemind names
        handlers after the class, so without this a subclass could not be called by the coordinator's state
        download (``peer.swarm.state``), by an unguarded peer, or by an attacker subclass under another name."""
        wire = next(c for c in cls.__mro__ if c.__module__.startswith("hivemind."))
        return wire._get_handle_name(namespace, method_name)

    def run(self) -> None:
        """The averager process's entry (after the fork): its large buffers are mapped one by one (peer.memory), and
        its Python allocations traced when the memory-trace diagnostic is on."""
        map_large_allocations()
        start_memory_trace(type(self).__name__)
        super().run()

    @contextlib.contextmanager
    def _register_allreduce_group(self, group_info: GroupInfo):
        """hivemind's registration of a running group, then the freed round's pages back to the OS: only once the
        group is unregistered is the round's runner (and every buffer it held) dropped. Between rounds the
        process's RSS is then what it keeps, not what the last round happened to leave (``bench/faults.py soak``)."""
        try:
            with super()._register_allreduce_group(group_info):
                yield
        finally:
            release_free_memory()

    def _clip_settings(self) -> ClipSettings:
        """The reducer's settings for this averager's rounds: in state rounds clipping is no ban evidence
        (``ClipSettings.for_state``)."""
        return self._guard.clip.for_state() if self.outcome_kind == STATE else self._guard.clip

    def _emit_outcomes(self, outcomes: dict[str, str]) -> None:
        if self._guard.channel is not None:
            if self.outcome_kind == STATE:
                outcomes = self._state_grace.filter(outcomes)
            self._guard.channel.put(RoundOutcomes(self.outcome_kind, outcomes))

    async def rpc_join_group(
        self, request: averaging_pb2.JoinRequest, context: P2PContext
    ) -> AsyncIterator[averaging_pb2.MessageFromLeader]:
        if not self._guard.gate.admits(context.remote_id):
            logger.warning(
                "refusing %s into our group: %s", context.remote_id, self._guard.gate.why_not(context.remote_id)
            )
            yield averaging_pb2.MessageFromLeader(code=averaging_pb2.PROTOCOL_VIOLATION)
            return
        async for response in super().rpc_join_group(request, context):
            yield response

    async def rpc_download_state(
        self, request: averaging_pb2.DownloadRequest, context: P2PContext
    ) -> AsyncIterator[averaging_pb2.DownloadData]:
        if not self._guard.gate.admits(context.remote_id):
            logger.warning(
                "refusing a state download by %s: %s", context.remote_id, self._guard.gate.why_not(context.remote_id)
            )
            return  # hivemind's deny: an empty stream sends the peer to the next averager
        async for message in super().rpc_download_state(request, context):
            yield message

    async def _run_allreduce_inplace_(
        self, tensors: Sequence[torch.Tensor], group_info: GroupInfo, group_id: bytes | None = None, **kwargs
    ):
        """hivemind's in-place all-reduce with our runner, and (robust) a non-finite result left unapplied.

        Starts by handing the previous round's freed buffers back to the OS (peer.memory): by now hivemind has
        dropped that round's runner, and without it this process's RSS followed the rounds up and down by tens of
        MiB and crept upward over an hour."""
        release_free_memory()
        group_id = group_info.group_id if group_id is None else group_id
        robust = self._guard.robust
        runner = GatedAllReduceRunner(
            gate=self._guard.gate,
            clip=self._clip_settings() if robust else None,
            on_outcomes=self._emit_outcomes,
            p2p=self._p2p,
            servicer_type=type(self),
            prefix=self.prefix,
            tensors=tensors,
            group_id=group_id,
            ordered_peer_ids=group_info.peer_ids,
            **kwargs,
        )
        assert group_id in self._running_groups, f"Group id {group_id} was not registered in _register_allreduce_group"
        self._running_groups[group_id].set_result(runner)

        if runner.modes[group_info.peer_ids.index(self.peer_id)] == AveragingMode.AUX:
            async for _ in runner:
                raise ValueError("aux peers should not receive averaged tensors")
            return
        if not self._round_applies(group_info):
            async for _ in runner:  # our parts are still reduced and sent: the others' rounds end as they expect
                pass
            return
        senders = sum(mode != AveragingMode.AUX for mode in runner.modes)
        # every robust round is checked as a whole, not only groups of two: a group of three where one peer has
        # weight 0 leaves two usable senders, which the reducer averages plainly (seen: an honest peer's loss went
        # to 329 in the 4-peer sign-flip scenario before this). Costs one held copy of the round's updates.
        check = RoundNormCheck(self._guard.clip.round_norm_ratio) if robust and runner.weight > 0 else None
        kept_local = 0
        async for tensor, update in azip(as_aiter(*tensors), runner):
            if robust and not bool(torch.isfinite(update).all()):
                kept_local += 1  # this tensor keeps its local value for the round
                continue
            if check is not None:
                check.hold(tensor, update)
                continue
            self._apply_update(tensor, update)
        if kept_local:
            logger.warning("averaged result not finite for %d of %d tensors: kept them local", kept_local, len(tensors))
        if check is not None:
            passed = check.passes()
            if senders == 2:  # a pair's verdict on the other peer: the evidence the reducer could not give
                verdict = (Outcome.ACCEPTED if passed else Outcome.CLIPPED).value
                self._emit_outcomes({
                    str(peer_id): verdict
                    for peer_id, mode in zip(group_info.peer_ids, runner.modes, strict=True)
                    if peer_id != self.peer_id and mode != AveragingMode.AUX
                })  # fmt: skip
            if passed:
                for tensor, update in check.held:
                    self._apply_update(tensor, update)
            else:
                local, averaged = check.norms()
                logger.warning(
                    "not applying a %s round of %d peers: the average's norm %.3g is over %g x ours (%.3g); "
                    "kept ours", self.outcome_kind, senders, averaged, check.ratio, local,
                )  # fmt: skip

    def _round_applies(self, group_info: GroupInfo) -> bool:
        """Whether this round's result is applied to our tensors at all (every member decides the same: the group's
        metadata is the same for all). By default every round is."""
        return True

    def _apply_update(self, tensor: torch.Tensor, update: torch.Tensor) -> None:
        tensor.add_(update, alpha=self._averaging_alpha)
        self.last_updated = get_dht_time()
        self._state_updated.set()
