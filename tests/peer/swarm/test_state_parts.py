"""The split state download (``peer.swarm.overrides.state_parts``) between real state averagers on loopback: joiners
take tensor ranges from every donor of the newest state, and a donor that dies mid-stream costs only a retry of the
rest of its range at another donor."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import AsyncIterator  # noqa: UP035 - hivemind's ServicerBase only recognises typing's alias for streams

import hivemind
import pytest
import torch
from hivemind.averaging import DecentralizedAverager
from hivemind.p2p import P2PContext
from hivemind.proto import averaging_pb2

from peer.swarm.overrides.guard import AveragerGuard
from peer.swarm.overrides.state_averager import GuardedStateAverager
from peer.swarm.overrides.state_parts import PART_FAILURES, SERVED
from protos.warmswarm.v1 import state_parts_pb2

PREFIX = "parts_test"
DONOR_EPOCH = 3
SHAPES = [(64, 64), (64,), (64, 128), (128,), (128, 64), (64,), (32, 64), (32,)]


def _values(seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for shape in SHAPES]


def _averager(dht: hivemind.DHT, values: list[torch.Tensor], cls=GuardedStateAverager) -> GuardedStateAverager:
    return cls(
        guard=AveragerGuard(),
        dht=dht,
        optimizer=lambda ps: torch.optim.Adam(ps, lr=1e-3),
        params=[torch.nn.Parameter(v.clone()) for v in values],
        prefix=PREFIX,
        next_chunk_timeout=5.0,  # a donor gone silent mid-stream is given up after this long
        start=True,
    )


def _donor(dht: hivemind.DHT, cls=GuardedStateAverager) -> GuardedStateAverager:
    """A donor at epoch ``DONOR_EPOCH`` with the same state as every other donor (as peers of one swarm are)."""
    averager = _averager(dht, _values(seed=1), cls)
    averager.local_epoch = DONOR_EPOCH
    averager.state_sharing_priority = DONOR_EPOCH
    return averager


def _dht_nodes(stack: ExitStack, n: int) -> list[hivemind.DHT]:
    """``n`` DHT nodes on loopback, the others bootstrapped from the first, each shut down on leaving ``stack``."""
    nodes: list[hivemind.DHT] = []
    for _ in range(n):
        initial = nodes[0].get_visible_maddrs() if nodes else []
        nodes.append(hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=initial))
        stack.callback(nodes[-1].shutdown)
    return nodes


def _declared(dht: hivemind.DHT) -> dict:
    found = dht.get(f"{PREFIX}.all_averagers", latest=True)
    return found.value if found is not None and isinstance(found.value, dict) else {}


def _wait_for_donors(dht: hivemind.DHT, n: int) -> None:
    deadline = time.monotonic() + 60
    while sum(getattr(e, "value", None) == DONOR_EPOCH for e in _declared(dht).values()) < n:
        assert time.monotonic() < deadline, f"fewer than {n} donors declared their state"
        time.sleep(0.2)


def _download(joiner: GuardedStateAverager) -> tuple[dict, list[torch.Tensor]]:
    loaded = DecentralizedAverager.load_state_from_peers(joiner, wait=True, timeout=120)
    assert loaded is not None, "the joiner got no state"
    # copies: the tensors that came from the averager's process live in shared memory files that its end removes;
    # one freed after that (a later garbage collection) aborts this process ("could not unlink the shared memory")
    metadata, tensors = loaded
    return metadata, [t.clone() for t in tensors]


class DyingDonor(GuardedStateAverager):
    """A donor whose averager process dies after sending three messages of a state part (a volunteer's machine
    switched off mid-stream): the messages before the death are written to its p2p daemon, the rest never come."""

    async def rpc_download_state_part(
        self, request: state_parts_pb2.StatePartRequest, context: P2PContext
    ) -> AsyncIterator[averaging_pb2.DownloadData]:  # hivemind reads the annotations to register the handler
        sent = 0
        async for message in super().rpc_download_state_part(request, context):
            if sent == 3:
                os._exit(1)
            yield message
            sent += 1


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_joiners_at_once_download_ranges_from_every_donor_and_get_the_donors_state():
    with ExitStack() as stack:
        dhts = _dht_nodes(stack, 5)
        donors = [_donor(dht) for dht in dhts[:3]]
        joiners = [_averager(dht, _values(seed=2)) for dht in dhts[3:]]
        for averager in donors + joiners:
            stack.callback(averager.shutdown)
        _, expected, _ = donors[0].get_current_state()
        for dht in dhts[3:]:
            _wait_for_donors(dht, 3)
        with ThreadPoolExecutor(len(joiners)) as pool:
            results = list(pool.map(_download, joiners))
        donor_ids = {d.peer_id.to_base58() for d in donors}
        for metadata, tensors in results:
            assert metadata["epoch"] == DONOR_EPOCH and metadata[PART_FAILURES] == 0
            assert len(tensors) == len(expected)
            assert all(torch.equal(t, e) for t, e in zip(tensors, expected, strict=True))
            served = metadata[SERVED]
            assert set(served) == donor_ids  # every donor sent this joiner a range
            wire = sum(served.values())
            assert all(n >= wire / 10 for n in served.values()), served  # near-equal shares (one tensor is 1/4)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_donor_dying_mid_part_costs_only_the_rest_of_its_range_from_another_donor():
    with ExitStack() as stack:
        dhts = _dht_nodes(stack, 3)
        healthy, dying = _donor(dhts[0]), _donor(dhts[1], DyingDonor)
        joiner = _averager(dhts[2], _values(seed=2))
        for averager in (healthy, dying, joiner):
            stack.callback(averager.shutdown)
        _, expected, _ = healthy.get_current_state()
        _wait_for_donors(dhts[2], 2)
        t0 = time.monotonic()
        metadata, tensors = _download(joiner)
        assert time.monotonic() - t0 < 60  # bounded: one cut part, one retry elsewhere
        assert not dying.is_alive()
        assert metadata[PART_FAILURES] == 1
        assert all(torch.equal(t, e) for t, e in zip(tensors, expected, strict=True))
        served = metadata[SERVED]
        # what the dying donor sent before it died was kept, and the healthy one sent the rest of its range
        assert served[dying.peer_id.to_base58()] > 0
        assert served[healthy.peer_id.to_base58()] > 0


class NoPartsDonor(GuardedStateAverager):
    """A donor that answers every part request with an empty stream (as one that refuses them does), while it
    serves hivemind's whole download."""

    async def rpc_download_state_part(
        self, request: state_parts_pb2.StatePartRequest, context: P2PContext
    ) -> AsyncIterator[averaging_pb2.DownloadData]:
        return
        yield


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_when_no_donor_serves_parts_the_joiner_downloads_the_whole_state_the_hivemind_way():
    with ExitStack() as stack:
        first, second = _dht_nodes(stack, 2)
        donor = _donor(first, NoPartsDonor)
        joiner = _averager(second, _values(seed=2))
        for averager in (donor, joiner):
            stack.callback(averager.shutdown)
        _, expected, _ = donor.get_current_state()
        _wait_for_donors(second, 1)
        metadata, tensors = _download(joiner)
        assert SERVED not in metadata  # hivemind's download, not a split one
        assert metadata["epoch"] == DONOR_EPOCH
        assert all(torch.equal(t, e) for t, e in zip(tensors, expected, strict=True))
