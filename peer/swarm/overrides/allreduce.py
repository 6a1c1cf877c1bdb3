"""The all-reduce runner of both averagers: hivemind's butterfly all-reduce with the peer gate and robust reduction.

Replaces (hivemind 1.1.12): ``AllReduceRunner.__init__`` (the reducer), ``_communicate_with_peer`` (the gate, our
wire type, replies that carry the average), ``_accumulate_parts_streaming`` and ``rpc_aggregate_part`` (the gate on
every part).

Replies that carry the average (``BLOCKWISE_4BIT``, ``peer.swarm.codecs.replies_with_average``): hivemind's reducer
sends each sender ``average - its part`` in the sender's codec, and the sender adds that to its own values. For
4-bit pseudo-gradients that reply loses half a 4-bit step of the difference, differently for every sender, so the
peers would apply different updates each round and, with nothing averaging the parameters themselves, drift apart
for good. Instead the reducer encodes the average of the part (deterministic: every sender gets the
same bytes) and applies the same decoded value to its own part: all peers of the round leave it with the same
average, up to the float rounding of hivemind's delta rule (tests/peer/swarm/test_average_replies.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import AsyncIterator  # noqa: UP035 - hivemind's ServicerBase only recognises typing's alias for streams

import torch
from hivemind.averaging.allreduce import AllReduceRunner
from hivemind.averaging.partition import AllreduceException, BannedException
from hivemind.compression import CompressionInfo
from hivemind.p2p import P2PContext, PeerID
from hivemind.proto import averaging_pb2
from hivemind.utils.asyncio import aiter_with_timeout, amap_in_executor, attach_event_on_finished

from peer.swarm.blockwise4bit import BLOCKWISE_4BIT
from peer.swarm.codecs import codec_for, decode_part, replies_with_average, reply_codec
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
        if peer_id == self.peer_id:
            await self._reduce_own_parts()
        else:
            await self._exchange_parts_with(peer_id)

    def _own_part_sent_as(self, peer_index: int, part_index: int) -> tuple[torch.Tensor, int]:
        """Our raw part ``part_index`` of those reduced by ``peer_index``, and the wire type our codec gives it.
        (hivemind's ``TensorPartContainer`` keeps the raw parts with their infos until the round ends.)"""
        container = self.tensor_part_container
        part, info = container._input_parts_by_peer[peer_index][part_index]
        return part, codec_for(container.compression, info).compression_type

    def _replies_with_average(self, peer_index: int, part_index: int) -> bool:
        """Whether our part's reply is the average itself; False once hivemind has finalized the round's parts
        (a round failing meanwhile), so the other codecs' path never fails on this lookup."""
        try:
            return replies_with_average(self._own_part_sent_as(peer_index, part_index)[1])
        except IndexError:
            return False

    async def _reduce_own_parts(self) -> None:
        """hivemind's path for the parts we reduce ourselves, with the average of a ``replies_with_average`` part
        taken as its senders decode it."""
        peer_index = self.ordered_peer_ids.index(self.peer_id)
        sender_index = self.sender_peer_ids.index(self.peer_id)
        for part_index, tensor_part in enumerate(self.parts_for_local_averaging):
            averaged = await self.tensor_part_reducer.accumulate_part(
                sender_index, part_index, tensor_part, weight=self.weight
            )
            if self._replies_with_average(peer_index, part_index):
                averaged = reply_codec(BLOCKWISE_4BIT).roundtrip(averaged)
            self.tensor_part_container.register_processed_part(peer_index, part_index, averaged - tensor_part)

    async def _exchange_parts_with(self, peer_id: PeerID) -> None:
        """hivemind's sender path (send our parts, receive the reducer's replies) with ``decode_part`` for our wire
        type, and a reply that carries the average turned into hivemind's delta against our raw part."""
        peer_index = self.ordered_peer_ids.index(peer_id)
        try:
            done_sending = asyncio.Event()
            inputs_aiter = attach_event_on_finished(self._generate_input_for_peer(peer_index), done_sending)
            stream = await self._get_peer_stub(peer_id).rpc_aggregate_part(inputs_aiter)
            if self.should_delay_results(self.peer_id):
                await done_sending.wait()

            def decode(message: averaging_pb2.AveragingData):
                if message.code != averaging_pb2.AVERAGED_PART:
                    raise AllreduceException(f"{peer_id} sent {averaging_pb2.MessageCode.Name(message.code)}")
                return decode_part(message.tensor_part), message.tensor_part.compression

            part_index = 0
            replies = aiter_with_timeout(stream, self.reducer_timeout)
            prefetch = self.tensor_part_container.prefetch
            async for reply, wire_type in amap_in_executor(decode, replies, max_prefetch=prefetch):
                if replies_with_average(wire_type):
                    own, sent_as = self._own_part_sent_as(peer_index, part_index)
                    if sent_as != wire_type:
                        raise AllreduceException(f"{peer_id} replied with an average to a part of wire type {sent_as}")
                    reply = reply - own
                self.tensor_part_container.register_processed_part(peer_index, part_index, reply)
                part_index += 1
            if part_index != self.tensor_part_container.num_parts_by_peer[peer_index]:
                raise AllreduceException(
                    f"peer {peer_id} sent {part_index} parts, but we expected "
                    f"{self.tensor_part_container.num_parts_by_peer[peer_index]}"
                )
        except BaseException as e:
            if isinstance(e, Exception):
                logger.debug("Caught %r when communicating to %s", e, peer_id, exc_info=True)
            self.tensor_part_container.register_failed_reducer(peer_index)
            raise

    async def _accumulate_parts_streaming(self, stream: AsyncIterator[averaging_pb2.AveragingData], sender_index: int):
        """hivemind's reducer loop for one sender, with these changes: parts are decoded by ``decode_part`` (our
        wire type too); the reply is encoded by ``peer.swarm.codecs.reply_codec`` for the sender's wire type, and
        for a ``replies_with_average`` type it is the average itself (module docstring). Why our reply codec:
        hivemind encodes it with its registry's codec for that type, and for ``UNIFORM_8BIT`` that is the ±3σ codec
        that clamps a heavy-tailed tensor's largest entries, whatever codec the sender used (measured: two peers'
        8-bit outer momenta 0.1 apart, at |m| ≤ 0.16, after three rounds)."""
        part_index = 0
        loop = asyncio.get_event_loop()
        try:
            decoded = amap_in_executor(
                lambda message: (decode_part(message.tensor_part), message.weight, message.tensor_part),
                stream,
                max_prefetch=self.tensor_part_container.prefetch,
            )
            async for part, weight, wire in decoded:
                try:
                    averaged = await self.tensor_part_reducer.accumulate_part(sender_index, part_index, part, weight)
                except BannedException:
                    break  # this sender was banned: nothing more to reduce for it
                part_index += 1
                answer = averaged if replies_with_average(wire.compression) else averaged - part
                encode = partial(reply_codec(wire.compression).compress, answer, CompressionInfo.from_tensor(answer))
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
