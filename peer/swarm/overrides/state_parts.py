"""The state download split over several donors (``StatePartsDownload``): each joiner streams contiguous tensor
ranges of equal bytes from the donors that hold the newest state, in parallel, and a range cut off by a donor that
fails resumes from the first tensor it lacks at another donor.

Replaces (hivemind 1.1.12): ``DecentralizedAverager._load_state_from_peers`` (in the averager's process), and adds
the RPC ``rpc_download_state_part`` beside hivemind's ``rpc_download_state``.

What stays hivemind's, and why: the framing and compression of the stream (``DownloadData`` parts, a tensor begins
where a part carries its dtype; the donor's ``state_compression``), so a part is exactly the bytes a whole download
would carry for those tensors; the snapshot the donor serves (``get_current_state``, a copy of one moment between
steps); the ``all_averagers`` declarations that say who holds which state; and hivemind's whole download from one
donor as the fallback, used when no donor answers part requests (a peer of an older version) or the parts cannot be
made consistent, so a split that fails costs time, never the join.

The coordinator's latest checkpoint is one more source (``peer.swarm.checkpoint_source``) when the joiner was handed
one (``use_checkpoint_source``) and it holds the donors' step: it takes one range, over HTTP, and its parts are
checked against the donors' like any donor's (a checkpoint of another state is dropped, its tensors asked again of
the donors); it counts as one more donor beyond ``max_donors``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator  # noqa: UP035 - hivemind's ServicerBase only recognises typing's alias for streams

import torch
from hivemind.averaging import DecentralizedAverager
from hivemind.compression import CompressionInfo, deserialize_torch_tensor
from hivemind.p2p import P2PContext, PeerID
from hivemind.proto import averaging_pb2
from hivemind.utils import MPFuture
from hivemind.utils.streaming import combine_from_streaming, split_for_streaming
from hivemind.utils.timed_storage import ValueWithExpiration

from peer.run.state_format import LANDED_ROUND
from peer.swarm.checkpoint_source import (
    NAME,
    CheckpointRanges,
    CheckpointSource,
    hand_over,
    open_checkpoint,
    take_over,
)
from peer.swarm.donors import donor_order, newest_donors, runs, split_by_bytes
from protos.warmswarm.v1 import state_parts_pb2

logger = logging.getLogger(__name__)

PARTS_TOTAL = "warmswarm_parts_total"  # a part's metadata: how many tensors the donor's whole state has
SERVED = "warmswarm_served"  # a split download's metadata: bytes received per donor (base58 peer id, or NAME)
PART_FAILURES = "warmswarm_part_failures"  # a split download's metadata: parts cut off and asked again elsewhere
# what every part of one download must agree on: the donors' epoch and (DiLoCo) last averaged outer round, whose
# anchor they serve as parameters
CONSISTENCY = ("epoch", LANDED_ROUND)


@dataclass(frozen=True)
class SplitDownload:
    """How a joiner splits its state download.

    ``max_donors``: donors one joiner streams from at once; why a cap: past a handful, more streams only add
    per-stream overhead to a downlink that is already full, and joiners capped at different subsets (rendezvous
    order) still cover every donor. ``max_failures``: parts cut off before the split download is given up (then
    hivemind's whole download). ``rounds``: passes to replace parts that came from an older state than the others
    (a donor stepped while the joiner was downloading). ``chunk_timeout``: seconds a donor may go silent
    mid-stream, when the averager has no ``next_chunk_timeout`` of its own. ``first_chunk_timeout``: seconds to
    the first chunk, which follows the donor's snapshot of its state (the bench's first run: with 8 joiners at once
    on a loaded 2-core machine every part missed the peers' 3-5 s chunk timeout there, and each joiner fell back to
    the whole download). ``snapshot_reuse``: seconds a donor serves parts from one snapshot, so the requests of
    joiners arriving together cost one copy of the state, not one each (parts of an older snapshot are caught by the
    consistency check like any other)."""

    enabled: bool = True
    max_donors: int = 4
    max_failures: int = 4
    rounds: int = 2
    chunk_timeout: float = 30.0
    first_chunk_timeout: float = 120.0
    snapshot_reuse: float = 2.0


class _Abandon(Exception):
    """The split download cannot finish: the caller falls back to hivemind's whole download."""


class StatePartsDownload(DecentralizedAverager):
    """Serves ranges of this averager's state (``rpc_download_state_part``) and downloads the state in ranges from
    several donors (``_load_state_from_peers``, which every download path reaches: hivemind's
    ``load_state_from_peers``, ``peer.swarm.state.fetch_state``). The metadata of a split download carries the
    bytes each donor sent (``SERVED``) and how many parts were cut off (``PART_FAILURES``)."""

    split_download: SplitDownload = SplitDownload()
    checkpoint_source: CheckpointSource | None = None  # in the averager's process (``use_checkpoint_source``)

    def use_checkpoint_source(self, source: CheckpointSource | None) -> None:
        """From now on (host process), the split downloads also fetch from ``source`` when it holds the donors'
        state; None: from the donors only. Announced through hivemind's control pipe, so that the download requested
        next, which follows it in the pipe, sees it; the source itself goes through a file (``hand_over``)."""
        previous = self.__dict__.pop("_source_file", None)
        if previous is not None:
            Path(previous).unlink(missing_ok=True)  # not taken over (the averager's process ended first)
        path = None if source is None else hand_over(source)
        if path is not None:
            self._source_file = path
        self._outer_pipe.send(("_set_checkpoint_source", [path], {}))

    async def _set_checkpoint_source(self, path: str | None) -> None:
        self.checkpoint_source = None if path is None else take_over(path)

    async def rpc_download_state_part(
        self, request: state_parts_pb2.StatePartRequest, context: P2PContext
    ) -> AsyncIterator[averaging_pb2.DownloadData]:
        """Tensors ``[start, stop)`` of a fresh snapshot of our state, the first part carrying the metadata and the
        total number of tensors. Refused (an empty stream) as hivemind refuses a whole download: state sharing off,
        or (``GuardedAveragerMixin``) a peer the gate does not admit."""
        guard = getattr(self, "_guard", None)
        if guard is not None and not guard.gate.admits(context.remote_id):
            logger.warning("refusing a state part to %s: %s", context.remote_id, guard.gate.why_not(context.remote_id))
            return
        if not self.allow_state_sharing:
            return
        metadata, tensors, infos = await self._part_snapshot()
        if infos is None:
            infos = [CompressionInfo.from_tensor(tensor, key=i) for i, tensor in enumerate(tensors)]
        header = self.serializer.loads(metadata)
        header[PARTS_TOTAL] = len(tensors)
        first: bytes | None = self.serializer.dumps(header)
        for i in range(request.start, min(request.stop, len(tensors))):
            for part in split_for_streaming(self.state_compression.compress(tensors[i], infos[i], allow_inplace=False)):
                if first is not None:
                    yield averaging_pb2.DownloadData(tensor_part=part, metadata=first)
                    first = None
                else:
                    yield averaging_pb2.DownloadData(tensor_part=part)

    async def _part_snapshot(self):
        """Our state as ``get_current_state`` gives it, shared by the part requests of ``snapshot_reuse`` seconds
        (one snapshot in flight at a time), then dropped: a copy of the whole state is not kept between joiners."""
        snapshot = self.__dict__.get("_parts_snapshot")
        if snapshot is None:
            snapshot = asyncio.ensure_future(self._get_current_state_from_host_process())
            self._parts_snapshot = snapshot
            asyncio.get_running_loop().call_later(self.split_download.snapshot_reuse, self._drop_snapshot, snapshot)
        return await asyncio.shield(snapshot)

    def _drop_snapshot(self, snapshot) -> None:
        if self.__dict__.get("_parts_snapshot") is snapshot:
            del self._parts_snapshot

    async def _load_state_from_peers(self, future: MPFuture, timeout: float | None = None):
        """The split download; hivemind's whole download from one donor when it is off or cannot finish.

        The task is kept referenced while it runs: hivemind starts it with ``asyncio.create_task`` and keeps no
        reference, and the futures it awaits (``MPFuture``: hivemind holds those weakly) keep none either, so a
        garbage collection mid-download destroyed it, pending, and the caller waited out its timeout."""
        task = asyncio.current_task()
        running = self.__dict__.setdefault("_split_downloads", set())
        running.add(task)
        try:
            await self._load_state(future, timeout)
        finally:
            running.discard(task)

    async def _load_state(self, future: MPFuture, timeout: float | None) -> None:
        if self.split_download.enabled:
            t0 = time.monotonic()
            try:
                loaded = await _SplitRun(self, future).run()
            except _Abandon as e:
                logger.warning("split state download given up (%s): downloading it whole from one donor", e)
                loaded = None
            except Exception as e:  # never leave the caller's future unset: it would wait out its whole timeout
                logger.warning("split state download failed (%s: %s): downloading it whole from one donor",
                               type(e).__name__, e)  # fmt: skip
                loaded = None
            if loaded is not None:
                served = loaded[0][SERVED]
                shares = ", ".join(f"{d if d == NAME else d[-6:]}: {n / 1e6:.1f} MB" for d, n in served.items())
                logger.info("downloaded the state from %d donors in %.2f s (%s)", len(served), time.monotonic() - t0,
                            shares)  # fmt: skip
                if not future.done():
                    future.set_result(loaded)
                return
            if future.done():  # cancelled by the caller (its deadline, Ctrl-C)
                return
        await super()._load_state_from_peers(future, timeout=timeout)


class _SplitRun:
    """One split download, run in the averager's process: the donors, the ranges still wanted, what arrived."""

    def __init__(self, averager: StatePartsDownload, future: MPFuture):
        self.averager = averager
        self.settings = averager.split_download
        self.future = future
        self.tensors: dict[int, torch.Tensor] = {}
        self.key_of: dict[int, tuple] = {}  # tensor index -> consistency key of the part it came in
        self.donor_key: dict[PeerID, tuple] = {}  # each donor's consistency key in its last part
        self.metadata_of: dict[tuple, dict] = {}
        self.served: Counter[PeerID | CheckpointRanges] = Counter()
        self.failed: set[PeerID | CheckpointRanges] = set()
        self.failures = 0
        self.total: int | None = None
        self.infos: list | None = None  # our own state's compression infos: the checkpoint's tensors go through them
        self.from_checkpoint: set[int] = set()  # tensor indices that came from the coordinator's checkpoint

    async def run(self) -> tuple[dict, list[torch.Tensor]] | None:
        averager = self.averager
        me = averager.peer_id
        key = f"{averager._matchmaking.group_key_manager.prefix}.all_averagers"
        found = await averager.dht.get(key, latest=True, return_future=True)
        declared = {
            subkey: float(entry.value)
            for subkey, entry in (found.value.items() if found is not None and isinstance(found.value, dict) else ())
            if isinstance(entry, ValueWithExpiration) and isinstance(entry.value, int | float)
        }
        holders = newest_donors(declared, me.to_bytes())
        order = donor_order(me.to_bytes(), holders)
        if not order:
            return None
        donors: list[PeerID | CheckpointRanges] = [PeerID(d) for d in order]
        # our own state has the layout of the swarm's (same model, same optimizer): it gives the ranges' bytes; the
        # coordinator's checkpoint is opened meanwhile, for the donors' step (their declared priority)
        source = averager.checkpoint_source
        opening = asyncio.create_task(open_checkpoint(source, declared[holders[0]])) if source is not None else None
        checkpoint = None
        try:
            _, own, infos = await averager._get_current_state_from_host_process()
            checkpoint = await opening if opening is not None else None
            return await self._split(donors, own, infos, checkpoint)
        finally:
            if opening is not None and not opening.done():
                opening.cancel()
            if checkpoint is not None:
                await checkpoint.close()

    async def _split(self, donors: list, own: list[torch.Tensor], infos, checkpoint: CheckpointRanges | None):
        sizes = [t.numel() * t.element_size() for t in own]
        self.total = len(sizes)
        if not sizes:
            return None
        self.infos = list(infos) if infos is not None else None
        parts = min(len(donors), self.settings.max_donors)
        if checkpoint is not None and (problem := checkpoint.fits(own)) is not None:
            logger.warning("not fetching state from %r (%s): the state comes from peers only", checkpoint, problem)
        elif checkpoint is not None:
            donors, parts = [checkpoint, *donors], parts + 1  # first: its range is sure to be asked of it
        pending = deque(split_by_bytes(sizes, parts))
        for _ in range(self.settings.rounds + 1):
            await self._fetch(pending, donors)
            # the donors' parts say which state is the newest; the checkpoint's are checked against them
            donor_keys = [k for i, k in self.key_of.items() if i not in self.from_checkpoint]
            if not donor_keys:
                raise _Abandon("no donor sent a part to check the coordinator's checkpoint against")
            newest = max(donor_keys)
            if checkpoint in donors and checkpoint not in self.failed and checkpoint.key != newest:
                logger.info("%r holds state %s, the donors %s: asking the donors for its tensors", checkpoint,
                            checkpoint.key, newest)  # fmt: skip
                self.failed.add(checkpoint)
            stale = [i for i, k in self.key_of.items() if k != newest]
            if not stale:
                metadata = dict(self.metadata_of[newest])
                metadata.pop(PARTS_TOTAL, None)
                metadata[SERVED] = {_name(donor): n for donor, n in self.served.items()}
                metadata[PART_FAILURES] = self.failures
                return metadata, [self.tensors[i] for i in range(self.total)]
            logger.info("%d tensors came from an older state than %s: asking for them again", len(stale), newest)
            for i in stale:
                del self.tensors[i], self.key_of[i]
                self.from_checkpoint.discard(i)
            pending = deque(runs(stale))
            # those that sent the newest state first: the others may not have reached it yet
            donors = sorted(donors, key=lambda d: self.donor_key.get(d) != newest)
        raise _Abandon(f"the donors' states kept changing over {self.settings.rounds + 1} passes")

    async def _fetch(self, pending: deque[tuple[int, int]], donors: list) -> None:
        """Fetches every range of ``pending``, each from the live donor with the fewest ranges in flight (first in
        our order among equals); a range cut off goes back from its first missing tensor."""
        active: dict[asyncio.Task, tuple[PeerID, int, int]] = {}
        load: Counter = Counter()
        try:
            while pending or active:
                if self.future.done():
                    raise _Abandon("cancelled")
                while pending:
                    alive = [d for d in donors if d not in self.failed]
                    if not alive:
                        raise _Abandon(f"no donor left to ask ({self.failures} parts failed)")
                    donor = min(alive, key=lambda d: (load[d], alive.index(d)))
                    start, stop = pending.popleft()
                    active[asyncio.create_task(self._fetch_range(donor, start, stop))] = (donor, start, stop)
                    load[donor] += 1
                done, _ = await asyncio.wait(active, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    donor, start, stop = active.pop(task)
                    load[donor] -= 1
                    error = task.exception()
                    if isinstance(error, _Abandon):
                        raise error
                    if error is None:
                        continue
                    self.failures += 1
                    self.failed.add(donor)
                    missing = next((i for i in range(start, stop) if i not in self.tensors), None)
                    logger.warning("state part %d-%d from %s failed at tensor %s (%s: %s); asking another donor",
                                   start, stop, donor, missing, type(error).__name__, error)  # fmt: skip
                    if self.failures > self.settings.max_failures:
                        raise _Abandon(f"{self.failures} parts failed")
                    if missing is not None:
                        pending.append((missing, stop))
        finally:
            for task in active:
                task.cancel()

    async def _fetch_range(self, donor: PeerID | CheckpointRanges, start: int, stop: int) -> None:
        """Streams tensors ``[start, stop)`` from ``donor`` into ``self.tensors``, each kept as soon as it is whole,
        so a cut-off stream loses only the tensor in flight."""
        if isinstance(donor, CheckpointRanges):
            return await donor.fetch(start, stop, self._keep_from_checkpoint(donor), self._count(donor))
        averager = self.averager
        stub = averager.get_stub(averager._p2p, donor, namespace=averager.prefix)
        stream = await stub.rpc_download_state_part(state_parts_pb2.StatePartRequest(start=start, stop=stop))
        timeout = averager.next_chunk_timeout or self.settings.chunk_timeout
        index, pieces, key = start, [], None
        async for message in _with_timeouts(stream, self.settings.first_chunk_timeout, timeout):
            if message.metadata:
                metadata = averager.serializer.loads(message.metadata)
                if metadata.get(PARTS_TOTAL) != self.total:
                    raise _Abandon(f"donor {donor} has {metadata.get(PARTS_TOTAL)} tensors, we have {self.total}")
                key = tuple(v if isinstance(v := metadata.get(name), int) else -1 for name in CONSISTENCY)
                self.donor_key[donor] = key
                self.metadata_of.setdefault(key, metadata)
            if key is None:
                raise ConnectionError("the donor sent tensors before its metadata")
            if message.tensor_part.dtype and pieces:
                self._keep(index, pieces, key)
                index, pieces = index + 1, []
            pieces.append(message.tensor_part)
            self.served[donor] += len(message.tensor_part.buffer)
        if pieces:
            self._keep(index, pieces, key)
            index += 1
        if index < stop:
            raise ConnectionError(f"the stream ended after {index - start} of {stop - start} tensors")

    def _keep(self, index: int, pieces: list, key: tuple) -> None:
        self.tensors[index] = deserialize_torch_tensor(combine_from_streaming(pieces))
        self.key_of[index] = key
        self.from_checkpoint.discard(index)

    def _keep_from_checkpoint(self, checkpoint: CheckpointRanges):
        """Keeps a tensor as the checkpoint holds it, put through our state compression, as a donor's stream would
        carry it: the swarm's state as it was sent (the coordinator received it that way too) comes out unchanged."""

        def keep(index: int, tensor: torch.Tensor) -> None:
            info = self.infos[index] if self.infos is not None else CompressionInfo.from_tensor(tensor, key=index)
            compressed = self.averager.state_compression.compress(tensor, info, allow_inplace=True)
            self.tensors[index] = deserialize_torch_tensor(compressed)
            self.key_of[index] = checkpoint.key
            self.from_checkpoint.add(index)

        return keep

    def _count(self, donor) -> Callable[[int], None]:
        def count(n: int) -> None:
            self.served[donor] += n

        return count


def _name(donor: PeerID | CheckpointRanges) -> str:
    """A donor's key in ``SERVED``: its base58 peer id, or ``NAME`` for the coordinator's checkpoint."""
    return NAME if isinstance(donor, CheckpointRanges) else donor.to_base58()


async def _with_timeouts(stream, first: float, then: float):
    """The messages of ``stream``, the first within ``first`` seconds, each next within ``then`` (TimeoutError)."""
    iterator = stream.__aiter__()
    timeout = first
    while True:
        try:
            yield await asyncio.wait_for(iterator.__anext__(), timeout=timeout)
        except StopAsyncIteration:
            return
        timeout = then
