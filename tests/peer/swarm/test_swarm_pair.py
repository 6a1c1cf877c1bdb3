"""A group of two real hivemind averagers (in-process DHT nodes, loopback): honest pairs average every tensor even
where their parts differ wildly in norm, and a guarded peer paired with a ×1000 copy keeps its own tensors.

Regression: the first version refused, per part, any two copies whose norms differed > 10×. In the demo (2 honest
peers) that fired on a key bias (gradient 0 on one peer, 1e-10 on the other) and on word-embedding rows, every
round, and the two peers' parameters drifted apart."""

import time

import pytest
import torch
from hivemind.averaging import DecentralizedAverager

from peer.swarm.overrides.guard import AveragerGuard, GuardedAveragerMixin
from peer.swarm.robust import ClipSettings
from peer.swarm.round_evidence import OutcomeChannel
from tests.peer.swarm.loopback import two_dht_nodes


class GuardedAverager(GuardedAveragerMixin, DecentralizedAverager):
    """The mixin on hivemind's base averager: the same all-reduce path the gradient and state averagers take."""


def _tensors(scale: float, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    key_bias = torch.zeros(192) if seed == 0 else 1e-10 * torch.randn(192, generator=g)
    sparse = torch.zeros(4096)
    sparse[: 64 if seed == 0 else 4096] = torch.randn(64 if seed == 0 else 4096, generator=g)  # 100x norm apart
    dense = torch.randn(1000, generator=g)
    return [scale * t for t in (key_bias, sparse, dense)]


def _average(first: DecentralizedAverager, second: DecentralizedAverager) -> None:
    for _attempt in range(3):  # matchmaking on 2 busy cores: bounded retries
        futures = [a.step(wait=False, timeout=60, allow_retries=False) for a in (first, second)]
        results = [f.result() for f in futures]
        if all(r is not None for r in results):
            return
    pytest.fail(f"the two averagers did not form a group in 3 attempts: {results}")


@pytest.fixture
def dhts():
    with two_dht_nodes() as nodes:
        yield nodes


def _averager(cls, dht, tensors, prefix, channel=None):
    kwargs = dict(averaged_tensors=tensors, dht=dht, prefix=prefix, target_group_size=2, min_group_size=2)
    kwargs.update(min_matchmaking_time=2.0, request_timeout=1.0, start=True)
    # no grace: these one-round tests are about the verdict itself (a state averager's first rounds are no evidence)
    guard = AveragerGuard(channel=channel, clip=ClipSettings(state_grace_rounds=0))
    return cls(guard=guard, **kwargs) if cls is GuardedAverager else cls(**kwargs)


def _verdicts(channel: OutcomeChannel, about: str) -> list[str]:
    """What the guarded peer reported about ``about`` (the reports cross a process boundary: poll briefly)."""
    seen: list[str] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(v != "excluded" for v in seen):
        seen += [r.outcomes[about] for r in channel.drain() if about in r.outcomes]
        time.sleep(0.2)
    return seen


@pytest.mark.timeout(300)
def test_two_honest_peers_average_every_tensor_even_parts_100x_apart(dhts):
    ours, theirs = _tensors(1.0, 0), _tensors(1.0, 1)
    expected = [(a + b) / 2 for a, b in zip(ours, theirs, strict=True)]
    pairs = zip(dhts, (ours, theirs), strict=True)
    averagers = [_averager(GuardedAverager, dht, tensors, "pair_honest") for dht, tensors in pairs]
    try:
        _average(*averagers)
        for averager in averagers:
            with averager.get_tensors() as tensors:
                for got, want in zip(tensors, expected, strict=True):
                    tolerance = 1e-6 * float(want.abs().max())  # fp32 rounding, relative to each tensor's scale
                    assert float((got - want).abs().max()) <= tolerance, (got - want).abs().max()
    finally:
        for averager in averagers:
            averager.shutdown()


@pytest.mark.timeout(300)
def test_a_guarded_peer_paired_with_a_x1000_copy_keeps_its_own_tensors(dhts):
    ours = _tensors(1.0, 2)
    attacker_tensors = [-1000 * t for t in _tensors(1.0, 2)]
    channel = OutcomeChannel()
    honest = _averager(GuardedAverager, dhts[0], [t.clone() for t in ours], "pair_attack", channel)
    attacker = _averager(DecentralizedAverager, dhts[1], attacker_tensors, "pair_attack")
    try:
        _average(honest, attacker)
        with attacker.get_tensors() as tensors:  # the unguarded side did average (the round really happened)
            assert torch.allclose(tensors[2], (ours[2] - 1000 * ours[2]) / 2, rtol=1e-5)
        with honest.get_tensors() as tensors:
            for got, want in zip(tensors, ours, strict=True):
                assert torch.equal(got, want)
        # the pair's verdict on the other peer is evidence for the ban ledger; the reducer alone gives none
        verdicts = _verdicts(channel, str(dhts[1].peer_id))
        assert "clipped" in verdicts and "accepted" not in verdicts, verdicts
    finally:
        honest.shutdown()
        attacker.shutdown()
