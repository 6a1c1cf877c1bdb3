"""Ask one named peer for the training state it serves, to compare peers with each other after a fault.

hivemind's ``load_state_from_peers`` takes the state from whichever peer ranks first; a fault test needs the state
of *each* survivor, so this opens the same ``rpc_download_state`` stream to a chosen peer id (from a client-mode
DHT, inside the DHT's process) and returns its metadata (the global step is ``epoch``) and every tensor it sent:
parameters and optimizer statistics, in the peer's optimizer order.

The tensors are deserialised here, not in the DHT's process: that process is a fork of the bench (or pytest)
process, whose OpenMP threads it does not have. A multi-threaded torch op there (copying a received tensor into
shared memory to hand it back, for one) waits for those threads forever: the ``peer_kill`` scenario's observer hung
in libgomp inside ``_share_filename_cpu_`` and every later download timed out (``{}`` in 15 tries). Serialised
tensors cross the pipe as bytes, which needs no torch at all.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from functools import partial

import hivemind
import torch
from hivemind.compression import deserialize_torch_tensor
from hivemind.p2p import PeerID
from hivemind.proto import averaging_pb2, runtime_pb2
from hivemind.utils import MSGPackSerializer
from hivemind.utils.streaming import combine_from_streaming

from peer.swarm.overrides.state_download import StateDownloadClient
from peer.swarm.state import STATE_AVERAGER_SUFFIX

logger = logging.getLogger(__name__)


@dataclass
class ServedState:
    peer_id: str
    step: int
    tensors: list[torch.Tensor]
    # the non-tensor leaves of the optimizer's state dict, in hivemind's flattening order: learning rates, betas,
    # weight decay... per param group (a difference here between peers at one step is a schedule out of step)
    optimizer_values: tuple = ()

    def finite(self) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in self.tensors if t.is_floating_point())

    def step_counters(self, start: int) -> list[float]:
        """The distinct 0-dim tensors from ``start`` on: the optimizer's per-parameter step counts (Adam's bias
        correction depends on them, and hivemind's state averaging neither averages nor sets them)."""
        return sorted({float(t) for t in self.tensors[start:] if t.dim() == 0})


def max_abs_diff(a: ServedState, b: ServedState, start: int = 0, stop: int | None = None) -> float:
    """Largest elementwise difference over tensors ``start:stop`` (hivemind sends the parameters first, then the
    optimizer statistics, then extra tensors)."""
    if len(a.tensors) != len(b.tensors):
        return float("inf")
    pairs = zip(a.tensors[start:stop], b.tensors[start:stop], strict=True)
    return max((float((x.float() - y.float()).abs().max()) for x, y in pairs), default=0.0)


async def _download_one(p2p, prefix: str, peer_id: str, timeout: float) -> tuple[str, dict, list[bytes]] | None:
    """Runs in the DHT's process: (peer id, metadata, each tensor as serialised ``runtime_pb2.Tensor`` bytes)."""
    stub = StateDownloadClient.get_stub(p2p, PeerID.from_base58(peer_id), namespace=prefix)
    metadata, parts, tensors = None, [], []

    async def read() -> None:
        nonlocal metadata, parts
        stream = await stub.rpc_download_state(averaging_pb2.DownloadRequest())
        async for message in stream:
            if message.metadata:
                metadata = MSGPackSerializer.loads(message.metadata)
            if message.tensor_part.dtype and parts:
                tensors.append(combine_from_streaming(parts).SerializeToString())
                parts = []
            parts.append(message.tensor_part)
        if parts:
            tensors.append(combine_from_streaming(parts).SerializeToString())

    # not asyncio.wait_for: on a timeout it cancels the read and then waits for the cancellation to finish, and a
    # p2p stream torn down mid-message did not finish (the peer_kill fast test hung here for 19 min, 2026-12-05)
    task = asyncio.ensure_future(read())
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()  # not awaited: a download that is stuck stays stuck in the background, not in our way
        return None
    if task.exception() is not None or not metadata:
        return None
    return peer_id, metadata, tensors


def _served_state(peer_id: str, metadata: dict, tensors: list[bytes]) -> ServedState | None:
    """The state a peer sent, or None for a stream cut short inside a tensor (its bytes do not fill its shape).

    Why that happens and why None: hivemind's p2p client reads a closed stream as its end (``_read_from_stream``
    catches ``IncompleteReadError`` and stops, hivemind 1.1.12), whichever side closed it and why, so a download can
    stop anywhere without an error (why the serving side closed it, here under load average 25-38, was not traced).
    Cut between two tensors it arrives with fewer tensors than the others' (``states_at_steps`` reads it again); cut
    inside one, the last tensor cannot be decoded (the ``peer_kill`` fast test, 2026-12-07: "shape '[30522, 32]' is
    invalid for input of size 442368", the generator's embedding table cut at 45 %). hivemind's own
    ``load_state_from_peers`` drops such a download and asks the next peer; the harness reads it again, the same
    way."""
    values = tuple(m.get("value") for m in metadata.get("optimizer_metadata", ()) if m.get("type") == "value")
    try:
        decoded = [deserialize_torch_tensor(runtime_pb2.Tensor.FromString(t)) for t in tensors]
    except (RuntimeError, ValueError) as e:
        logger.warning("the state served by %s was cut short inside a tensor (%s): reading it again", peer_id[-6:], e)
        return None
    return ServedState(peer_id, int(metadata["epoch"]), decoded, values)


async def _download_all(dht, node, *, prefix: str, peer_ids: list[str], timeout: float):
    return await asyncio.gather(*(_download_one(node.p2p, prefix, pid, timeout) for pid in peer_ids))


def download_states(dht: hivemind.DHT, run_id: str, peer_ids: list[str], timeout: float = 30.0) -> list[ServedState]:
    """The states ``peer_ids`` serve, downloaded concurrently (so they are as close in time as possible); a peer
    that does not answer within ``timeout``, or whose stream was cut inside a tensor, is left out."""
    prefix = run_id + STATE_AVERAGER_SUFFIX
    future = dht.run_coroutine(partial(_download_all, prefix=prefix, peer_ids=peer_ids, timeout=timeout), True)
    try:
        found = future.result(timeout=timeout + 30.0)  # bounded here too, whatever happens inside the DHT process
    except TimeoutError:
        future.cancel()
        return []
    served = (_served_state(*state) for state in found if state is not None)
    return [state for state in served if state is not None]
