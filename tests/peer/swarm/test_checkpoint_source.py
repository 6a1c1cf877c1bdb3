"""The coordinator's latest checkpoint as one more source of a joiner's split state download
(``peer.swarm.checkpoint_source``), between real state averagers on loopback and a real coordinator HTTP server: it
serves a range over HTTP when it holds the donors' state, is left out when it does not, and a transfer it cuts or a
file it damaged costs a resumption or the donors' help, never a wrong state."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import hivemind
import pytest
import torch
from hivemind.averaging import DecentralizedAverager
from safetensors.torch import save_file

from coordinator.api.http import RunInfo, create_http_app, start_http_server
from coordinator.checkpoints import write_manifest
from coordinator.store import Store
from peer.run.checkpoint_layout import TRAINING_STATE_FILE, checkpoint_name
from peer.run.checkpoint_tensors import wire_locations
from peer.run.state_format import checkpoint_training_state, decode_wire_state, write_optimizer_file
from peer.swarm.checkpoint_source import NAME, CheckpointSource
from peer.swarm.overrides.guard import AveragerGuard
from peer.swarm.overrides.state_averager import GuardedStateAverager
from peer.swarm.overrides.state_parts import PART_FAILURES, SERVED

PREFIX = "ckpt_source_test"
DONOR_EPOCH = 3
LANDED = 2  # the donors' last averaged outer round (a DiLoCo swarm's state)
SHAPES = [(64, 64), (64,), (64, 128), (128,), (128, 64), (64,), (32, 64), (32,)]
NAMES = [f"discriminator.layer{i}.weight" for i in range(len(SHAPES))]  # as PretrainingModels names them


def _values(seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for shape in SHAPES]


def _averager(dht: hivemind.DHT, values: list[torch.Tensor]) -> GuardedStateAverager:
    return GuardedStateAverager(
        guard=AveragerGuard(),
        dht=dht,
        optimizer=lambda ps: torch.optim.Adam(ps, lr=1e-3),
        params=[torch.nn.Parameter(v.clone()) for v in values],
        prefix=PREFIX,
        next_chunk_timeout=5.0,
        start=True,
    )


def _donor(dht: hivemind.DHT) -> GuardedStateAverager:
    """A donor at ``DONOR_EPOCH`` with the same state as every other donor, Adam moments included (not the zeros of
    a fresh optimizer: the checkpoint's optimizer tensors must be told apart from the joiner's own)."""
    averager = _averager(dht, _values(seed=1))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for group in averager.optimizer.param_groups:
            for p in group["params"]:
                averager.optimizer.state[p]["exp_avg"].copy_(torch.randn(p.shape, generator=gen))
                averager.optimizer.state[p]["exp_avg_sq"].copy_(torch.rand(p.shape, generator=gen))
    averager.local_epoch = DONOR_EPOCH
    averager.landed_round = LANDED
    averager.state_sharing_priority = DONOR_EPOCH
    return averager


@dataclass
class Swarm:
    donors: list[GuardedStateAverager]
    joiner: GuardedStateAverager
    metadata: dict
    expected: list[torch.Tensor]

    @property
    def donor_ids(self) -> set[str]:
        return {d.peer_id.to_base58() for d in self.donors}


@pytest.fixture(scope="module")
def swarm() -> Iterator[Swarm]:
    """Two donors of the same state and a joiner (its downloads are not applied: each test downloads again)."""
    with ExitStack() as stack:
        dhts: list[hivemind.DHT] = []
        for _ in range(3):
            initial = dhts[0].get_visible_maddrs() if dhts else []
            dhts.append(hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=initial))
            stack.callback(dhts[-1].shutdown)
        donors = [_donor(dht) for dht in dhts[:2]]
        joiner = _averager(dhts[2], _values(seed=2))
        for averager in (*donors, joiner):
            stack.callback(averager.shutdown)
        metadata, expected, _ = donors[0].get_current_state()
        deadline = time.monotonic() + 60
        while True:
            found = dhts[2].get(f"{PREFIX}.all_averagers", latest=True)
            entries = found.value.values() if found is not None and isinstance(found.value, dict) else ()
            if sum(getattr(e, "value", None) == DONOR_EPOCH for e in entries) >= 2:
                break
            assert time.monotonic() < deadline, "the donors never declared their state"
            time.sleep(0.2)
        yield Swarm(donors, joiner, metadata, [t.clone() for t in expected])


def _write_checkpoint(root: Path, swarm: Swarm, step: int, landed: int = LANDED) -> Path:
    """The donors' state as the coordinator's saver writes it (model file, optimizer.safetensors, training state,
    manifest last), said to be of ``step`` and outer round ``landed``."""
    structure = swarm.donors[0].optimizer.state_dict()
    state = decode_wire_state(swarm.metadata, swarm.expected, NAMES, structure, 0)
    state.step, state.landed_round = step, landed
    d = root / checkpoint_name(step)
    d.mkdir(parents=True)
    save_file({name.removeprefix("discriminator."): t.contiguous() for name, t in state.parameters.items()},
              str(d / "model.safetensors"))  # fmt: skip
    write_optimizer_file(state, d)
    training = {**checkpoint_training_state(state), "step": step, "samples": 0, "run_id": PREFIX, "stage": 0}
    (d / TRAINING_STATE_FILE).write_text(json.dumps(training))
    write_manifest(d, {"step": step, "stage": 0, "created": time.time()})
    return d


@dataclass
class Cuts:
    """ASGI middleware around the coordinator's app: the first ``times`` responses of tensor bytes (a Range that
    starts past the headers) are cut after ``after`` bytes, the connection dropped; ``ranges`` records every
    checkpoint file's Range header."""

    app: object
    times: int = 0
    after: int = 1000
    ranges: list[tuple[str, int]] = field(default_factory=list)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/checkpoints/"):
            return await self.app(scope, receive, send)
        requested = dict(scope["headers"]).get(b"range", b"bytes=0-").decode()
        start = int(requested.removeprefix("bytes=").split("-")[0])
        self.ranges.append((scope["path"].rsplit("/", 1)[-1], start))
        if start <= 64 or self.times <= 0:
            return await self.app(scope, receive, send)
        self.times -= 1
        sent = 0

        async def cut(message):
            nonlocal sent
            if message["type"] == "http.response.body":
                body = message.get("body", b"")
                if sent + len(body) > self.after:
                    await send({**message, "body": body[: self.after - sent], "more_body": True})
                    raise ConnectionResetError("cut by the test")
                sent += len(body)
            await send(message)

        await self.app(scope, receive, cut)


@contextmanager
def _coordinator(tmp_path: Path, root: Path, cuts: int = 0) -> Iterator[tuple[str, Cuts]]:
    """A coordinator's HTTP server over the checkpoints in ``root``, behind ``Cuts``."""
    store = Store(tmp_path / "coordinator.db", alive_window=60.0)
    store.open_run(PREFIX, {"run_id": PREFIX}, total_steps=100, now=time.time())
    app = Cuts(create_http_app(store, root, RunInfo(PREFIX, {"run_id": PREFIX})), times=cuts)
    http = start_http_server(app, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{http.port}", app
    finally:
        http.stop()
        store.close()


def _download(swarm: Swarm, url: str) -> tuple[dict, list[torch.Tensor]]:
    """The joiner's split download with the coordinator at ``url`` as a source (the downloaded state not applied)."""
    joiner = swarm.joiner
    locations = wire_locations(NAMES, 0, joiner.optimizer.state_dict())
    joiner.use_checkpoint_source(CheckpointSource(url, 0, tuple(locations), timeout=10.0, retries=2))
    try:
        loaded = DecentralizedAverager.load_state_from_peers(joiner, wait=True, timeout=120)
    finally:
        joiner.use_checkpoint_source(None)
    assert loaded is not None, "the joiner got no state"
    metadata, tensors = loaded
    return metadata, [t.clone() for t in tensors]  # copies: see test_state_parts._download


def _assert_donors_state(swarm: Swarm, metadata: dict, tensors: list[torch.Tensor]) -> None:
    assert metadata["epoch"] == DONOR_EPOCH
    assert len(tensors) == len(swarm.expected)
    for i, (t, e) in enumerate(zip(tensors, swarm.expected, strict=True)):
        assert t.dtype == e.dtype and torch.equal(t, e), f"wire tensor {i} differs from the donors'"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_checkpoint_of_the_donors_state_serves_a_range_beside_the_donors(swarm: Swarm, tmp_path: Path):
    _write_checkpoint(tmp_path / "ckpts", swarm, DONOR_EPOCH - 1)
    _write_checkpoint(tmp_path / "ckpts", swarm, DONOR_EPOCH)  # the latest
    with _coordinator(tmp_path, tmp_path / "ckpts") as (url, app):
        metadata, tensors = _download(swarm, url)
    _assert_donors_state(swarm, metadata, tensors)
    served = metadata[SERVED]
    assert set(served) == swarm.donor_ids | {NAME}, served
    total = sum(served.values())
    assert all(n >= total / 10 for n in served.values()), served  # about a third each
    assert metadata[PART_FAILURES] == 0
    assert {path for path, _ in app.ranges} >= {"model.safetensors", TRAINING_STATE_FILE}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_checkpoint_of_an_older_step_or_of_another_outer_round_is_not_mixed_in(swarm: Swarm, tmp_path: Path):
    _write_checkpoint(tmp_path / "old", swarm, DONOR_EPOCH - 1)
    with _coordinator(tmp_path, tmp_path / "old") as (url, app):
        metadata, tensors = _download(swarm, url)
    _assert_donors_state(swarm, metadata, tensors)
    assert set(metadata[SERVED]) == swarm.donor_ids  # left out from the start: only the listing was read
    assert app.ranges == []
    # the donors' step but not their outer round: its range is fetched, then dropped and asked of the donors
    _write_checkpoint(tmp_path / "round", swarm, DONOR_EPOCH, landed=LANDED - 1)
    with _coordinator(tmp_path, tmp_path / "round") as (url, _):
        metadata, tensors = _download(swarm, url)
    _assert_donors_state(swarm, metadata, tensors)
    assert metadata[SERVED][NAME] > 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_cut_transfer_resumes_from_the_bytes_it_holds(swarm: Swarm, tmp_path: Path):
    _write_checkpoint(tmp_path / "ckpts", swarm, DONOR_EPOCH)
    with _coordinator(tmp_path, tmp_path / "ckpts", cuts=1) as (url, app):
        metadata, tensors = _download(swarm, url)
    _assert_donors_state(swarm, metadata, tensors)
    assert metadata[PART_FAILURES] == 0 and metadata[SERVED][NAME] > 0
    data = [(path, start) for path, start in app.ranges if start > 64]
    path, cut = data[0]
    assert (path, cut + 1000) in data[1:], app.ranges  # asked again from the first byte it did not have


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_coordinator_that_keeps_failing_or_serves_a_damaged_or_missing_file_leaves_its_range_to_the_donors(
    swarm: Swarm, tmp_path: Path
):
    _write_checkpoint(tmp_path / "ckpts", swarm, DONOR_EPOCH)
    with _coordinator(tmp_path, tmp_path / "ckpts", cuts=100) as (url, app):
        metadata, tensors = _download(swarm, url)
    _assert_donors_state(swarm, metadata, tensors)
    assert metadata[PART_FAILURES] == 1  # its range, after 2 resumptions, went to a donor
    assert app.times < 100 - 2  # every request of its range was cut: some ran out of resumptions
    assert set(metadata[SERVED]) >= swarm.donor_ids
    # a file shorter than its manifest says (damaged on the coordinator's disk): not used at all
    ckpt = _write_checkpoint(tmp_path / "short", swarm, DONOR_EPOCH)
    optimizer = ckpt / "optimizer.safetensors"
    optimizer.write_bytes(optimizer.read_bytes()[:-100])
    with _coordinator(tmp_path, tmp_path / "short") as (url, _):
        metadata, tensors = _download(swarm, url)
    _assert_donors_state(swarm, metadata, tensors)
    assert set(metadata[SERVED]) == swarm.donor_ids
    # a file of its manifest missing on the coordinator's disk: the same
    ckpt = _write_checkpoint(tmp_path / "missing", swarm, DONOR_EPOCH)
    (ckpt / "optimizer.safetensors").unlink()
    with _coordinator(tmp_path, tmp_path / "missing") as (url, _):
        metadata, tensors = _download(swarm, url)
    _assert_donors_state(swarm, metadata, tensors)
    assert set(metadata[SERVED]) == swarm.donor_ids
    # no coordinator at that address: the same
    metadata, tensors = _download(swarm, "http://127.0.0.1:9")
    _assert_donors_state(swarm, metadata, tensors)
    assert set(metadata[SERVED]) == swarm.donor_ids
