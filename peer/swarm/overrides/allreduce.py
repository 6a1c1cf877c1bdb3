"""The all-reduce runner of both averagers: hivemind's butterfly all-reduce with the peer gate and robust reduction.

Replaces (hivemind 1.1.12): ``AllReduceRunner.__init__`` (the reducer), ``_communicate_with_peer``,
``_accumulate_parts_streaming`` and ``rpc_aggregate_part`` (the gate on every part)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import AsyncIterator  # noqa: UP035 - hivemind's ServicerBase only recognises typing's alias for streams

from hivemind.averaging.allreduce import AllReduceRunner
from hivemind.averaging.partition import BannedException
from hivemind.compression import CompressionInfo, deserialize_torch_tensor
from hivemind.p2p import P2PContext, PeerID
from hivemind.proto import averaging_pb2
from hivemind.utils.asyncio import amap_in_executor

from peer.swarm.codecs import reply_codec
from peer.swarm.gate import PeerGate
from peer.swarm.robust import CenteredClipReducer, ClipSettings, Outcome

logger = logging.getLogger(__name__)


class GatedAllReduceRunner(AllReduceRunner):
    """hivemind's butterfly all-reduce with the gate consulted for every groupmate and, when ``clip`` is given,
    ``CenteredClipReducer`` in place of the running mean."""

    def __init__(
        self,
        *,
        gate: PeerGate,
        clip: ClipSettings | None,
        on_outcomes: Callable[[dict[str, str]], None] | None = None,
        **kwargs,
    ):
        self._on_outcomes = on_outcomes  # first: a reducer may report while the rest of this runs
        super().__init__(**kwargs)
        self.gate = gate
        if clip is not None:
            plain = self.tensor_part_reducer
            plain.finished.set()  # retire hivemind's reducer before it saw any part (its finalize would warn)
            self.tensor_part_reducer = CenteredClipReducer(
                plain.part_shapes, plain.num_senders, clip, on_round_outcomes=self._report_outcomes
            )
        for peer_id in self.sender_peer_ids:
            if peer_id != self.peer_id and not gate.admits(peer_id):
                logger.warning("not averaging with %s: %s", peer_id, gate.why_not(peer_id))
                self.banned_senders.add(peer_id)
                self.tensor_part_reducer.on_sender_failed(self.sender_peer_ids.index(peer_id))

    def _report_outcomes(self, by_sender: dict[int, Outcome]) -> None:
        if self._on_outcomes is not None and by_sender:
            self._on_outcomes({str(self.sender_peer_ids[i]): outcome.value for i, outcome in by_sender.items()})

    async def _communicate_with_peer(self, peer_id: PeerID):
        if peer_id != self.peer_id and not self.gate.admits(peer_id):
            # a refused peer never sees our parts nor reduces them: we keep our local values for its share
            self.tensor_part_container.register_failed_reducer(self.ordered_peer_ids.index(peer_id))
            return
        await super()._communicate_with_peer(peer_id)

    async def _accumulate_parts_streaming(self, stream: AsyncIterator[averaging_pb2.AveragingData], sender_index: int):
        """hivemind's reducer loop for one sender, with one change: the averaged delta sent back is encoded by
        ``peer.swarm.codecs.reply_codec`` for the sender's wire type. Why: hivemind encodes it with its registry's
        codec for that type, and for ``UNIFORM_8BIT`` that is the ±3σ codec that clamps a heavy-tailed tensor's
        largest entries, whatever codec the sender used (measured: two peers' 8-bit outer momenta 0.1 apart, at
        |m| ≤ 0.16, after three rounds)."""
        part_index = 0
        loop = asyncio.get_event_loop()
        try:
            decoded = amap_in_executor(
                lambda message: (deserialize_torch_tensor(message.tensor_part), message.weight, message.tensor_part),
                stream,
                max_prefetch=self.tensor_part_container.prefetch,
            )
            async for part, weight, wire in decoded:
                try:
                    averaged = await self.tensor_part_reducer.accumulate_part(sender_index, part_index, part, weight)
                except BannedException:
                    break  # this sender was banned: nothing more to reduce for it
                part_index += 1
                delta = averaged - part
                encode = partial(reply_codec(wire.compression).compress, delta, CompressionInfo.from_tensor(delta))
                reply = await loop.run_in_executor(None, encode)
                yield averaging_pb2.AveragingData(code=averaging_pb2.AVERAGED_PART, tensor_part=reply)
        finally:
            if part_index != self.tensor_part_reducer.num_parts:
                await self._ban_sender(self.sender_peer_ids[sender_index])

    async def rpc_aggregate_part(
        self, stream: AsyncIterator[averaging_pb2.AveragingData], context: P2PContext
    ) -> AsyncIterator[averaging_pb2.AveragingData]:
        if not self.gate.admits(context.remote_id):
            logger.warning("refusing parts from %s: %s", context.remote_id, self.gate.why_not(context.remote_id))
            if context.remote_id in self.sender_peer_ids:
                await self._ban_sender(context.remote_id)
            yield averaging_pb2.AveragingData(code=averaging_pb2.PROTOCOL_VIOLATION)
            return
        async for message in super().rpc_aggregate_part(stream, context):
            yield message
