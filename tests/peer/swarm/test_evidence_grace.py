"""A state averager's first rounds are no ban evidence: peers that start together diverge honestly at first."""

from types import SimpleNamespace

from peer.swarm.bans import RejectionLedger
from peer.swarm.overrides.guard import AveragerGuard, GuardedAveragerMixin
from peer.swarm.robust import ClipSettings, Outcome
from peer.swarm.round_evidence import GRADIENTS, STATE, EvidenceGrace, RoundOutcomes

CLIPPED, ACCEPTED, EXCLUDED = Outcome.CLIPPED.value, Outcome.ACCEPTED.value, Outcome.EXCLUDED.value


def test_incriminating_outcomes_wait_out_the_grace_and_count_after_it():
    grace = EvidenceGrace(2)
    first = {"a": CLIPPED, "b": Outcome.NON_FINITE.value, "c": ACCEPTED}
    assert grace.filter(first) == {"a": EXCLUDED, "b": EXCLUDED, "c": ACCEPTED}
    assert grace.filter({"a": CLIPPED}) == {"a": EXCLUDED}
    assert grace.filter({"a": CLIPPED}) == {"a": CLIPPED}  # the third round is evidence


def _rounds_until_banned(grace_rounds: int, ban_after: int = 3) -> int:
    grace, ledger = EvidenceGrace(grace_rounds), RejectionLedger(ban_after)
    for n in range(1, 100):
        if ledger.record(RoundOutcomes(STATE, grace.filter({"slow-starter": CLIPPED}))):
            return n
    raise AssertionError("never banned")


def test_a_peer_clipped_from_the_start_is_banned_only_after_the_grace():
    # the soak's false ban: clipped in the first 3 state rounds -> banned; with the grace those rounds do not count
    assert _rounds_until_banned(0) == 3
    assert _rounds_until_banned(ClipSettings().state_grace_rounds) == ClipSettings().state_grace_rounds + 3


def test_a_peer_learns_of_its_own_ban_only_from_the_coordinator(monkeypatch):
    """What the training loop asks every metrics period (``LoopOptions.own_ban``): a peer the coordinator banned
    stops with one line instead of training alone and asking refusing donors for the state many times a second."""
    import time

    from peer.run.records import BanEntry, BanList, BanReport
    from peer.swarm import bans

    own = BanReport(peer_id="me", rejected={"other": 3}, banned={"other": "clipped state"}, counts={}, time=1.0)
    verdict = BanList(bans=[BanEntry(peer_id="me", reason="reported by 2 of 3 peers")], time=1.0)
    monkeypatch.setattr(bans, "fetch_reports", lambda dht, run_id: {b"mine": own})
    monkeypatch.setattr(bans, "fetch_ban_list", lambda dht, run_id, authority: verdict)
    gate = bans.BanGate(None, "run", b"mine", authority=b"coordinator", refresh_every=0.05)
    deadline = time.monotonic() + 10
    while gate.coordinator_ban("me") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gate.coordinator_ban("me") == "by the coordinator: reported by 2 of 3 peers"
    assert gate.coordinator_ban("other") is None  # banned by this peer's own ledger only: not a verdict on anyone
    assert gate.coordinator_ban("stranger") is None


def test_the_state_averager_does_not_count_clipping_as_evidence_and_the_gradient_averager_does():
    guard = AveragerGuard()
    state = GuardedAveragerMixin._clip_settings(SimpleNamespace(_guard=guard, outcome_kind=STATE))
    gradient = GuardedAveragerMixin._clip_settings(SimpleNamespace(_guard=guard, outcome_kind=GRADIENTS))
    assert state.clipping_is_evidence is False and state == guard.clip.for_state()
    assert gradient == guard.clip
