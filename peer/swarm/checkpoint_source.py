"""The coordinator's latest checkpoint as one more source of a joiner's split state download
(``peer.swarm.overrides.state_parts``): tensor ranges of the wire state fetched over HTTP ``Range`` from the
checkpoint's safetensors files, in the averager's process, beside the ranges the donors stream.

Why: the coordinator's uplink is a server's, and its checkpoint of the donors' step is the donors' state, so many
joiners at once spread over one more, large, uplink. When it holds the same state: its step is the donors' epoch,
its growth stage the joiner's, and (DiLoCo) its last averaged outer round the one the donors serve, which the split
download checks against the donors' parts like any other part's (a checkpoint of an older step is never mixed in;
in sync mode the epoch has usually moved on since the last checkpoint, and the coordinator is then simply not used).

What is checked, since a byte range cannot be checked against its file's sha256: each file is the one the manifest
lists (its sha256 as the ``If-Range`` ETag, and its size as the ``Content-Range`` total), the safetensors headers
give every tensor the dtype and shape of ours, and every tensor is put through the averager's own state compression,
so that it is what a donor's stream would have carried. A file damaged in place with its size unchanged is not
caught here (non-finite values still are, by the joiner's check of the whole downloaded state,
``peer.swarm.state_check``); the coordinator's start-up verification moves such a checkpoint aside.

A cut transfer resumes from the bytes it holds, ``retries`` times per run of bytes; a range the coordinator then
fails goes back to the donors like a failed donor's range. Anything unusable (no coordinator, no checkpoint of that
state, a missing or damaged file, another layout) leaves the download to the donors, with one log line.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import json
import logging
import os
import pickle
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import torch

from peer.run.checkpoint_layout import TRAINING_STATE_FILE
from peer.run.checkpoint_tensors import (
    HEADER_LENGTH_BYTES,
    ByteRun,
    TensorSpan,
    WireLocation,
    byte_runs,
    decode_tensor,
    header_length,
    tensor_spans,
    wire_locations,
)
from peer.run.coordinator_client import CheckpointEntry, CheckpointsAnswer
from peer.run.state_format import wire_names

logger = logging.getLogger(__name__)

NAME = "coordinator"  # the checkpoint's key in a split download's ``SERVED`` bytes
Keep = Callable[[int, torch.Tensor], None]  # takes wire tensor ``index`` as the checkpoint holds it


@dataclass(frozen=True)
class CheckpointSource:
    """Where a joiner may fetch parts of its state: the coordinator at ``url``, whose latest checkpoint is used when
    it is of growth ``stage`` and holds the donors' state. ``locations``: where each wire tensor lies in a
    checkpoint (``peer.run.checkpoint_tensors.wire_locations``). ``timeout``: seconds for a request to connect or
    for the next bytes to come; ``retries``: resumptions of a cut run of bytes before its range goes to the donors;
    ``parallel``: requests in flight at once; ``max_gap``: bytes between two wanted tensors of a file fetched along
    rather than asked for in two requests (``byte_runs``)."""

    url: str
    stage: int
    locations: tuple[WireLocation, ...]
    timeout: float = 30.0
    retries: int = 3
    parallel: int = 4
    max_gap: int = 1 << 16


def checkpoint_source(url: str | None, stage: int, opt, named_parameters) -> CheckpointSource | None:
    """The source a joiner with the swarm optimizer ``opt`` hands its state averager (host process); None without a
    coordinator, or for a state some of whose tensors no checkpoint holds (not a ``PretrainingModels`` model)."""
    if not url:
        return None
    averager = opt.opt.state_averager
    names = wire_names(opt, named_parameters)
    locations = wire_locations(names, len(averager.extra_tensors), averager.optimizer.state_dict())
    if any(location is None for location in locations):
        logger.info("this model's state has tensors a checkpoint does not hold: the state comes from peers only")
        return None
    return CheckpointSource(url.rstrip("/"), stage, tuple(locations))


def hand_over(source: CheckpointSource) -> str:
    """Writes ``source`` to a private temp file for the averager's process (``take_over``); returns its path.

    Why a file: hivemind's control pipe to that process carries small messages only (its end there is
    non-blocking, and a message longer than one read is lost, the ones after it misread: seen as ``BlockingIOError``
    and a download that never began), and a source names a location per tensor (25 KB for a small ELECTRA)."""
    fd, path = tempfile.mkstemp(prefix="warmswarm-checkpoint-source-", suffix=".pickle")
    with os.fdopen(fd, "wb") as f:
        pickle.dump(source, f)
    return path


def take_over(path: str) -> CheckpointSource | None:
    """The source ``hand_over`` wrote (None, with a warning, if it cannot be read); the file is removed."""
    try:
        with open(path, "rb") as f:
            source = pickle.load(f)  # noqa: S301 - our own process wrote it, into a file only we can read
        return source if isinstance(source, CheckpointSource) else None
    except (OSError, EOFError, pickle.UnpicklingError) as e:
        logger.warning("cannot read the checkpoint source %s (%s): the state comes from peers only", path, e)
        return None
    finally:
        Path(path).unlink(missing_ok=True)


class Unusable(Exception):
    """The coordinator's checkpoint cannot serve this download (why, in one line)."""


class CheckpointRanges:
    """The coordinator's latest checkpoint, opened for one split download: its files' tensor spans, in wire order.
    ``key``: the state it holds, as the split download's consistency key (step, last averaged outer round)."""

    def __init__(self, source: CheckpointSource, client: httpx.AsyncClient, entry: CheckpointEntry):
        self.source, self.client, self.name = source, client, entry.name
        self.key = (entry.step, -1)  # the last averaged outer round: read from its training state (``_opened``)
        self.spans: list[TensorSpan] = []
        self.files = {f.path: f for f in entry.files}

    def __repr__(self) -> str:
        return f"the coordinator's {self.name}"

    def fits(self, own: Sequence[torch.Tensor]) -> str | None:
        """Why the checkpoint's tensors do not have the layout of ``own`` (our state), or None when they do."""
        if len(own) != len(self.spans):
            return f"it holds {len(self.spans)} tensors, our state {len(own)}"
        for i, (span, tensor) in enumerate(zip(self.spans, own, strict=True)):
            if span.dtype != tensor.dtype or span.shape != tuple(tensor.shape):
                return (f"wire tensor {i} is {span.dtype} {list(span.shape)} in {span.path}, ours "
                        f"{tensor.dtype} {list(tensor.shape)}")  # fmt: skip
        return None

    async def fetch(self, start: int, stop: int, keep: Keep, received: Callable[[int], None]) -> None:
        """Fetches wire tensors ``[start, stop)``, calling ``keep(index, tensor)`` as each is whole and
        ``received(n)`` for every ``n`` bytes that arrive; raises (ConnectionError, Unusable) when a run of bytes
        cannot be had within ``retries`` resumptions, the tensors kept so far staying kept. Up to ``parallel``
        runs of bytes are in flight at once, so that round trips overlap."""
        spans = self.spans[start:stop]
        slots = asyncio.Semaphore(self.source.parallel)

        async def fetch_run(run: ByteRun) -> None:
            async with slots:
                await self._fetch_run(run, [(start + i, spans[i]) for i in run.members], keep, received)

        try:
            async with asyncio.TaskGroup() as group:  # the first failure cancels the other runs
                for run in byte_runs(spans, self.source.max_gap):
                    group.create_task(fetch_run(run))
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None

    async def _fetch_run(
        self, run: ByteRun, members: list[tuple[int, TensorSpan]], keep: Keep, received: Callable[[int], None]
    ) -> None:
        """The bytes of ``run``, which hold the wire tensors ``members`` (index, span; in the order of their bytes),
        resumed from the first byte not yet held after a cut."""
        buffer = bytearray()  # bytes from file offset ``base`` on: of the tensor in flight, and any gap before it
        base = held = run.start
        attempt, j = 0, 0
        while held < run.stop:
            try:
                async with self._get(run.path, held, run.stop) as response:
                    async for chunk in response.aiter_raw():
                        if held + len(chunk) > run.stop:
                            raise Unusable(f"{run.path}: the coordinator sent more bytes than asked for")
                        buffer += chunk
                        held += len(chunk)
                        received(len(chunk))
                        while j < len(members) and held >= members[j][1].stop:
                            index, span = members[j]
                            keep(index, decode_tensor(memoryview(buffer)[span.start - base : span.stop - base], span))
                            j += 1
                            # what lies before the next tensor is not needed again (two may share bytes: a tied key)
                            drop = max(0, min(members[j][1].start if j < len(members) else held, held) - base)
                            del buffer[:drop]
                            base += drop
                if held < run.stop:
                    raise httpx.ReadError(f"the response ended at byte {held} of {run.stop}")
            except (httpx.TransportError, OSError) as e:
                attempt += 1
                if attempt > self.source.retries:
                    raise ConnectionError(
                        f"{run.path} cut at byte {held} of {run.start}-{run.stop} ({e}), {attempt - 1} resumptions "
                        "failed"
                    ) from None
                logger.info("%s of the coordinator's %s cut at byte %d (%s: %s): resuming (%d/%d)", run.path,
                            self.name, held, type(e).__name__, e, attempt, self.source.retries)  # fmt: skip
                await asyncio.sleep(min(0.25 * 2**attempt, 5.0))

    def _get(self, path: str, begin: int, end: int):
        """A streamed request of bytes ``[begin, end)`` of ``path``, checked to be that part of that file."""
        return _checked_range(self.client, self._url(path), begin, end, self.files[path].size, self.files[path].sha256)

    def _url(self, path: str) -> str:
        return f"{self.source.url}/checkpoints/{quote(self.name)}/{quote(path)}"

    async def close(self) -> None:
        await self.client.aclose()


@asynccontextmanager
async def _checked_range(
    client: httpx.AsyncClient, url: str, begin: int, end: int, size: int, sha256: str
) -> AsyncIterator[httpx.Response]:
    """``GET`` of bytes ``[begin, end)`` with ``If-Range``: only a 206 of exactly that part of a file of ``size``
    bytes is a response (200: the file is another than the manifest's, or Range is not served)."""
    headers = {"Range": f"bytes={begin}-{end - 1}", "If-Range": f'"{sha256}"'}
    async with client.stream("GET", url, headers=headers) as response:
        if response.status_code != 206:
            raise Unusable(f"GET {url}: HTTP {response.status_code} to a Range request")
        expected = f"bytes {begin}-{end - 1}/{size}"
        if response.headers.get("content-range") != expected:
            raise Unusable(f"GET {url}: Content-Range {response.headers.get('content-range')!r}, expected "
                           f"{expected!r} (a file of another size than the manifest's)")  # fmt: skip
        yield response


async def open_checkpoint(source: CheckpointSource, epoch: float) -> CheckpointRanges | None:
    """The coordinator's latest checkpoint opened for a download of the donors' state at ``epoch`` (their declared
    priority): listed, of the step and stage wanted, its ``training_state.json`` read and its safetensors headers
    mapped to the wire tensors. None, with one log line saying why, when it cannot serve."""
    client = httpx.AsyncClient(timeout=source.timeout, follow_redirects=False)
    ranges = None
    try:
        listing = await client.get(f"{source.url}/api/v1/checkpoints")
        listing.raise_for_status()
        checkpoints = CheckpointsAnswer.model_validate(listing.json()).checkpoints
        if not checkpoints:
            logger.info("the coordinator has no checkpoint yet: the state comes from peers only")
            return None
        latest = checkpoints[-1]
        if latest.step != epoch or latest.stage != source.stage:
            logger.info("the coordinator's latest checkpoint %s is of step %d (growth stage %d), the donors' state of "
                        "step %s (stage %d): the state comes from peers only", latest.name, latest.step, latest.stage,
                        _step(epoch), source.stage)  # fmt: skip
            return None
        ranges = await _opened(source, client, latest)
        logger.info("the coordinator's checkpoint %s holds the donors' step %d: fetching part of the state from it",
                    latest.name, latest.step)  # fmt: skip
        return ranges
    except Exception as e:  # whatever the coordinator sends, the donors still serve the whole state
        logger.warning("not fetching state from the coordinator's checkpoint (%s: %s): the state comes from peers only",
                       type(e).__name__, e)  # fmt: skip
        return None
    finally:
        if ranges is None:  # not handed on (also when cancelled): its connections closed here
            await client.aclose()


def _step(epoch: float) -> str:
    return str(int(epoch)) if float(epoch).is_integer() else str(epoch)


async def _opened(source: CheckpointSource, client: httpx.AsyncClient, entry: CheckpointEntry) -> CheckpointRanges:
    """``entry`` read: its training state (the step again, and the last averaged outer round) and the spans of the
    wire tensors in its files."""
    files = {f.path: f for f in entry.files}
    ranges = CheckpointRanges(source, client, entry)
    state_entry = files.get(TRAINING_STATE_FILE)
    if state_entry is None:
        raise Unusable(f"{entry.name} has no {TRAINING_STATE_FILE}")
    raw = await _read(ranges, TRAINING_STATE_FILE, 0, state_entry.size)
    if hashlib.sha256(raw).hexdigest() != state_entry.sha256:
        raise Unusable(f"{TRAINING_STATE_FILE} of {entry.name} does not match its sha256")
    state = json.loads(raw)
    if state.get("step") != entry.step:
        raise Unusable(f"{TRAINING_STATE_FILE} of {entry.name} says step {state.get('step')}")
    landed = state.get("landed_round", -1)
    ranges.key = (entry.step, landed if isinstance(landed, int) else -1)
    # the tensors of every file a location's glob matches (one model file, or its shards), each header read once
    by_glob: dict[str, dict[str, TensorSpan]] = {}
    for glob in sorted({location.files for location in source.locations}):
        found: dict[str, TensorSpan] = {}
        for path in sorted(p for p in files if fnmatch.fnmatchcase(p, glob)):
            found.update(await _header(ranges, path))
        by_glob[glob] = found
    spans = []
    for location in source.locations:
        span = by_glob[location.files].get(location.key)
        if span is None:
            raise Unusable(f"{entry.name} holds no tensor {location.key} in {location.files}")
        spans.append(span)
    ranges.spans = spans
    return ranges


async def _header(ranges: CheckpointRanges, path: str) -> dict[str, TensorSpan]:
    size = ranges.files[path].size
    n = header_length(await _read(ranges, path, 0, HEADER_LENGTH_BYTES))
    if HEADER_LENGTH_BYTES + n > size:
        raise Unusable(f"{path}: a header of {n} bytes in a file of {size}")
    try:
        return tensor_spans(path, await _read(ranges, path, HEADER_LENGTH_BYTES, HEADER_LENGTH_BYTES + n), size)
    except ValueError as e:
        raise Unusable(str(e)) from None


async def _read(ranges: CheckpointRanges, path: str, begin: int, end: int) -> bytes:
    """Bytes ``[begin, end)`` of a (small) part of a checkpoint file, whole or an error."""
    async with ranges._get(path, begin, end) as response:
        data = await response.aread()
    if len(data) != end - begin:
        raise Unusable(f"{path}: {len(data)} bytes of {end - begin}")
    return data
