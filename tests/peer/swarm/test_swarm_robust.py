"""Robust averaging: CenteredClip (pure), its hivemind reducer, the rejection ledger, the gate's refusals, and — with
real processes — one attacker among 4 peers with the defences on and off."""

import asyncio
import math

import pytest
import torch
from hivemind.p2p import PeerID

from peer.swarm.bans import RejectionLedger
from peer.swarm.gate import AllGates, OpenGate
from peer.swarm.robust import CenteredClipReducer, ClipSettings, Outcome, RoundNormCheck, cap_weights, centered_clip
from peer.swarm.round_evidence import RoundOutcomes


def _honest(n: int, dim: int = 4096, seed: int = 0, spread: float = 1.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    truth = torch.randn(dim, generator=g)
    return [truth + spread * torch.randn(dim, generator=g) for _ in range(n)]


def _mean(xs, ws):
    return sum(w * x for w, x in zip(ws, xs, strict=True)) / sum(ws)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_without_outliers_it_is_the_weighted_mean(n):
    xs = _honest(n)
    ws = [32.0, 16.0, 24.0, 32.0, 8.0, 40.0, 16.0, 32.0][:n]
    out = centered_clip(xs, ws)
    assert torch.allclose(out.value, _mean(xs, ws), atol=1e-5)
    # with one or two senders there is no majority: no verdict (a pair's comes from the receiving side's RoundNormCheck)
    assert out.outcomes == [Outcome.ACCEPTED if n > 2 else Outcome.EXCLUDED] * n


def test_two_senders_give_the_weighted_mean_whatever_their_norms():
    """Two copies: no majority defines an outlier, so the reducer's result is hivemind's weighted mean, part by part
    (honest parts may differ 100× in norm); the group of two is guarded over the whole round (``RoundNormCheck``)."""
    a, b = _honest(2)
    assert torch.allclose(centered_clip([a, 3 * b], [3.0, 1.0]).value, (3 * a + 3 * b) / 4, rtol=1e-5)
    out = centered_clip([a, -1000 * b], [3.0, 1.0])
    assert torch.allclose(out.value, (3 * a - 1000 * b) / 4, rtol=1e-5)
    assert out.outcomes == [Outcome.EXCLUDED] * 2  # no verdict: "accepted" would reset an attacker's streak


def test_pair_check_applies_an_honest_round_and_holds_back_one_with_a_x1000_copy():
    ours = [t.clone() for t in _honest(3, dim=64, seed=1)]
    honest = [t * 1.5 + 0.1 for t in ours]  # another honest copy: comparable norm, different direction
    attacker = [-1000 * t for t in ours]
    for other, passes in ((honest, True), (attacker, False)):
        check = RoundNormCheck(ClipSettings().round_norm_ratio)
        for mine, theirs in zip(ours, other, strict=True):
            check.hold(mine, (mine + theirs) / 2 - mine)  # what the all-reduce sends back: average - ours
        assert check.passes() is passes, check.norms()
    zero = RoundNormCheck(5.0)
    zero.hold(torch.zeros(4), torch.ones(4))  # nothing of ours to compare with: a peer tagging along applies it
    assert zero.passes()


def _reduce_round(group: list[list[torch.Tensor]], settings: ClipSettings | None = None) -> dict[int, Outcome]:
    """One all-reduce round through a real ``CenteredClipReducer``: every sender sends its parts (weight 1) in
    order; returns the round's outcome per sender index, as reported at ``finalize``."""
    seen: list[dict] = []

    async def main():
        reducer = CenteredClipReducer(
            [p.shape for p in group[0]], len(group), settings or ClipSettings(), on_round_outcomes=seen.append
        )

        async def send(i):
            return [await reducer.accumulate_part(i, p, part, weight=1.0) for p, part in enumerate(group[i])]

        await asyncio.gather(*(send(i) for i in range(len(group))))
        reducer.finalize()

    asyncio.run(main())
    assert len(seen) == 1
    return seen[0]


def test_one_clipped_part_is_not_evidence_but_a_far_off_copy_is():
    """Measured on the demo model: in one round, 3 of 4 honest peers had 1–10 of 444 parts clipped. Counting any
    clipped part as a clipped round would ban honest peers after ``ban_after`` rounds; the round's outcome weighs the
    clipped share of each sender's distance over all its parts instead."""
    parts = 40
    g = torch.Generator().manual_seed(3)
    truth = [torch.randn(256, generator=g) for _ in range(parts)]
    senders = [[t + 0.5 * torch.randn(256, generator=g) for t in truth] for _ in range(4)]
    senders[1][7] = truth[7] + 2.0 * torch.randn(256, generator=g)  # one unusually noisy honest part
    attacker = [-1000 * t for t in senders[3]]
    assert centered_clip([s[7] for s in senders], [1.0] * 4).outcomes[1] is Outcome.CLIPPED  # clipped in a part...
    for group, expected in (
        (senders, [Outcome.ACCEPTED] * 4),  # ...yet its round is accepted
        ([*senders[:3], attacker], [Outcome.ACCEPTED] * 3 + [Outcome.CLIPPED]),
    ):
        assert _reduce_round(group) == dict(enumerate(expected))


def test_a_peer_one_optimizer_step_behind_is_not_evidence_in_a_state_round():
    """Parameters: three peers hold the same weights (fp16 rounding apart), a fourth is one AdamW step (lr 2e-4 per
    coordinate) behind. τ sits at its floor, so the laggard is clipped in every part — but that is not evidence
    (``evidence_floor``); a sign-flipped copy of the weights is."""
    parts = 20
    g = torch.Generator().manual_seed(5)
    weights = [0.03 * torch.randn(4096, generator=g) for _ in range(parts)]
    same = [[(w + 1e-4 * w * torch.randn(4096, generator=g)).half().float() for w in weights] for _ in range(3)]
    behind = [w - 2e-4 * torch.sign(torch.randn(4096, generator=g)) for w in weights]
    flipped = [-w for w in weights]
    for fourth, expected in ((behind, Outcome.ACCEPTED), (flipped, Outcome.CLIPPED)):
        group = [*same, fourth]
        assert centered_clip([s[0] for s in group], [1.0] * 4).outcomes[3] is Outcome.CLIPPED
        assert _reduce_round(group) == {0: Outcome.ACCEPTED, 1: Outcome.ACCEPTED, 2: Outcome.ACCEPTED, 3: expected}


def test_an_honest_peer_out_of_step_is_evidence_in_gradient_settings_but_not_in_a_state_round():
    """A peer whose gradient rounds failed for a while, as a state round sees it. Its weights are 25 AdamW steps off
    (lr 2e-4 per coordinate, all one way, on weights of scale 0.03: ~17 % of their norm). Its Adam moments are its
    own: where the others agree among themselves, and in rows their batches never touched (theirs ~0, its not).
    Counted as evidence, this bans it (how two honest soak peers were banned, 2026-12-05), and no evidence floor
    spares the last case, where the aggregate is ~0. State rounds therefore only clip (``ClipSettings.for_state``):
    an attacker's copy x1000 is still clipped to within τ, while a non-finite one still incriminates."""
    parts = 20
    g = torch.Generator().manual_seed(11)
    weights = [0.03 * torch.randn(4096, generator=g) for _ in range(parts)]
    moments = [1e-3 * torch.randn(4096, generator=g) for _ in range(parts)]
    rare = [torch.zeros(4096) for _ in range(parts)]
    for r in rare:  # a few rows the others' batches used
        r[:64] = 1e-7 * torch.randn(64, generator=g)

    def swarm_copy(tensors):
        return [(t + 1e-4 * t * torch.randn(4096, generator=g)).half().float() for t in tensors]

    stale = [w - 25 * 2e-4 * torch.sign(torch.randn(4096, generator=g)) for w in weights]
    own_moments = [m + 1e-3 * torch.randn(4096, generator=g) for m in moments]
    own_rare = [r + torch.where(torch.arange(4096) < 512, 1e-3, 0.0) * torch.randn(4096, generator=g) for r in rare]
    state = ClipSettings().for_state()
    for name, honest, swarm in (
        ("weights 25 steps behind", stale, weights),
        ("its own Adam moments", own_moments, moments),
        ("moments in rows the others never used", own_rare, rare),
    ):
        group = [swarm_copy(swarm) for _ in range(3)] + [honest]
        assert _reduce_round(group, ClipSettings())[3] is Outcome.CLIPPED, name
        assert _reduce_round(group, state) == dict.fromkeys(range(4), Outcome.ACCEPTED), name
    # no floor would do: a 10x-the-aggregate floor still counts the rows the others never used
    group = [swarm_copy(rare) for _ in range(3)] + [own_rare]
    assert _reduce_round(group, ClipSettings(evidence_floor=10.0))[3] is Outcome.CLIPPED

    honest = [swarm_copy(weights) for _ in range(3)]
    for attack in ([-1000 * w for w in weights], [1000 * w for w in weights]):
        clipped = centered_clip([h[0] for h in honest] + [attack[0]], [1.0] * 4, state)
        assert clipped.outcomes[3] is Outcome.CLIPPED  # the part's own verdict: clipped to within τ
        assert float((clipped.value - weights[0]).norm()) <= clipped.tau / 3 * 1.01 + 1e-3 * float(weights[0].norm())
    nan = [torch.full((4096,), float("nan")) for _ in weights]
    assert _reduce_round([*honest, nan], state)[3] is Outcome.NON_FINITE


@pytest.mark.parametrize("attack", ["sign_flip", "random"])
def test_one_outlier_x1000_moves_the_result_by_at_most_a_bounded_amount(attack):
    honest = _honest(3)
    ws = [32.0] * 4
    if attack == "sign_flip":
        bad = -1000 * honest[0]
    else:
        direction = torch.randn(honest[0].shape, generator=torch.Generator().manual_seed(7))
        bad = direction * 1000 * honest[0].norm() / direction.norm()
    out = centered_clip([*honest, bad], ws)
    target = _mean(honest, ws[:3])
    spread = max(float((x - target).norm()) for x in honest)
    plain = _mean([*honest, bad], ws)
    assert out.outcomes == [Outcome.ACCEPTED] * 3 + [Outcome.CLIPPED]
    # the attacker's pull is at most w_a·τ / Σ w_honest, τ = clip_factor × the typical honest distance
    assert out.tau <= 1.5 * ClipSettings().clip_factor * spread
    assert float((out.value - target).norm()) <= out.tau / 3 * 1.01
    assert float((plain - target).norm()) > 100 * float((out.value - target).norm())


def test_non_finite_contributions_and_weights_are_dropped():
    honest = _honest(3)
    nan = honest[0].clone()
    nan[17] = float("nan")
    inf = torch.full_like(honest[0], float("inf"))
    out = centered_clip([*honest, nan, inf, honest[1]], [1.0, 1.0, 1.0, 1.0, 1.0, float("nan")])
    assert out.outcomes[3:] == [Outcome.NON_FINITE] * 3
    assert torch.allclose(out.value, _mean(honest, [1.0] * 3), atol=1e-5)
    assert torch.isnan(centered_clip([nan, inf], [1.0, 1.0]).value).all()  # nothing usable: NaN, kept local


def test_a_liars_weight_is_capped_by_the_others_median():
    assert cap_weights([32.0, 16.0, 24.0, 1e6], max_ratio=8.0) == [32.0, 16.0, 24.0, 8.0 * 24.0]
    honest = _honest(4)
    liar = honest[3] + 50.0  # plausible-looking but shifted, claiming a million samples
    out = centered_clip([*honest[:3], liar], [32.0, 32.0, 32.0, 1e6])
    assert out.used_weights[3] == 8.0 * 32.0
    assert float((out.value - _mean(honest[:3], [1.0] * 3)).norm()) < 0.2 * float((liar - honest[0]).norm())


def test_zero_weight_senders_take_no_part():
    honest = _honest(3)
    out = centered_clip([*honest, torch.zeros_like(honest[0])], [1.0, 1.0, 1.0, 0.0])
    assert out.outcomes[3] is Outcome.EXCLUDED
    assert torch.allclose(out.value, _mean(honest, [1.0] * 3), atol=1e-5)


def test_reducer_reduces_each_part_robustly_and_reports_worst_outcome_per_sender():
    honest = [[torch.full((8,), v), torch.full((4,), v)] for v in (1.0, 1.1, 0.9)]
    attacker = [torch.full((8,), -1000.0), torch.full((4,), float("nan"))]
    senders = [*honest, attacker]
    seen: list[dict] = []

    async def main():
        reducer = CenteredClipReducer([torch.Size([8]), torch.Size([4])], len(senders), on_round_outcomes=seen.append)

        async def send(i):
            return [await reducer.accumulate_part(i, p, part, weight=1.0) for p, part in enumerate(senders[i])]

        return await asyncio.gather(*(send(i) for i in range(len(senders))))

    results = asyncio.run(main())
    for parts in results:  # every sender gets the same, robust, aggregate
        assert torch.allclose(parts[1], torch.full((4,), 1.0), atol=1e-6)
        assert float(parts[0].min()) > 0.5
    assert seen == [{0: Outcome.ACCEPTED, 1: Outcome.ACCEPTED, 2: Outcome.ACCEPTED, 3: Outcome.NON_FINITE}]


def test_ledger_bans_after_consecutive_rounds_per_kind_and_accepted_resets():
    ledger = RejectionLedger(ban_after=2)
    bad = {"A": "clipped", "B": "accepted"}
    assert ledger.record(RoundOutcomes("gradients", bad)) == []
    assert ledger.record(RoundOutcomes("state", {"A": "accepted"})) == []  # another kind: no reset
    assert ledger.record(RoundOutcomes("gradients", {"A": "accepted"})) == []  # reset
    assert ledger.record(RoundOutcomes("gradients", bad)) == []
    assert ledger.record(RoundOutcomes("gradients", {"A": "non_finite", "me": "non_finite"}), self_id="me") == ["A"]
    report = ledger.report("me")
    assert list(report.banned) == ["A"] and report.rejected == {"A": 3}
    assert report.counts == {"clipped": 2, "non_finite": 1}


def test_a_local_ban_is_lifted_after_ban_seconds_and_renewed_by_ban_after_more_rejected_rounds():
    now = [0.0]
    ledger = RejectionLedger(ban_after=2, ban_seconds=100.0, clock=lambda: now[0])
    clipped = RoundOutcomes("gradients", {"A": "clipped", "B": "accepted"})
    assert ledger.record(clipped) == [] and ledger.record(clipped) == ["A"]
    now[0] = 99.0
    assert ledger.expire() == [] and "A" in ledger.report("me").banned
    now[0] = 100.0
    assert ledger.expire() == ["A"] and ledger.report("me").banned == {}
    assert ledger.report("me").rejected == {"A": 2}  # the history stays
    assert ledger.record(clipped) == []  # the streak starts again from 0 ...
    assert ledger.record(clipped) == ["A"]  # ... and a peer still clipped is banned again
    assert ledger.banned_at == {"A": 100.0}
    with pytest.raises(ValueError, match="ban_seconds"):
        RejectionLedger(ban_after=2, ban_seconds=0)


def test_all_gates_is_a_conjunction_with_the_first_refusal_explained():
    peer = PeerID(b"\x12\x20" + bytes(32))

    class Refuses:
        def admits(self, peer_id):
            return False

        def why_not(self, peer_id):
            return "banned (test)"

    assert AllGates([OpenGate()]).admits(peer)
    gates = AllGates([OpenGate(), Refuses()])
    assert not gates.admits(peer) and gates.why_not(peer) == "banned (test)"


def test_clip_result_is_finite_for_finite_inputs():
    xs = _honest(5, dim=16)
    out = centered_clip(xs, [1.0] * 5)
    assert all(math.isfinite(v) for v in out.value.tolist())


# --- real processes: a coordinator and 4 peers, the last one attacking ------------------------------------------

STEPS = 8


@pytest.fixture(scope="module")
def swarms(tmp_path_factory):
    """The clean run and the sign-flip attack with defences on and off: three real swarms (each a coordinator and
    4 peers), run side by side since they mostly wait on matchmaking. Every process is reaped by the scenario."""
    from concurrent.futures import ThreadPoolExecutor

    import transformers  # noqa: F401 - imported here once: three threads importing it at once can race
    from transformers import AutoTokenizer  # noqa: F401

    import peer.growth  # noqa: F401
    import peer.modeling  # noqa: F401
    from bench.faultlib.attacks import SwarmStalled, run_attack_scenario

    def run(attack, defences, work):
        try:
            return run_attack_scenario(attack, defences, work, peers=4, steps=STEPS)
        except SwarmStalled as stalled:  # judged by each test: a failure for clean / on, a possible outcome for off
            return stalled

    root = tmp_path_factory.mktemp("attack")
    cases = {"clean": (None, True), "on": ("sign_flip", True), "off": ("sign_flip", False)}
    with ThreadPoolExecutor(len(cases)) as pool:
        futures = {name: pool.submit(run, attack, defences, root / name) for name, (attack, defences) in cases.items()}
        return {name: future.result() for name, future in futures.items()}


def _finished(result):
    if isinstance(result, Exception):
        raise result
    return result


@pytest.mark.scenario
@pytest.mark.timeout(1200)
def test_sign_flip_attacker_at_1_of_4_with_defences_on(swarms):
    """The honest peers' final loss is within 5 % of the clean run's, and the attacker ends banned by the
    coordinator (and locally by the honest peers)."""
    clean, result = _finished(swarms["clean"]), _finished(swarms["on"])
    assert math.isfinite(clean.final_loss) and clean.final_loss < clean.start_loss  # there is progress to spoil
    assert abs(result.final_loss - clean.final_loss) <= 0.05 * clean.final_loss, (result, clean)
    assert result.banned == [result.attacker] and result.locally_banned_by, result


@pytest.mark.scenario
@pytest.mark.timeout(1200)
def test_sign_flip_attacker_at_1_of_4_with_defences_off_spoils_training(swarms):
    """The test of the test: the same attack without the defences leaves the loss visibly worse (less than half
    of the clean run's progress, or NaN), and no one is banned. A swarm the attack stalled (its honest peers skip
    every exploding batch and stop stepping) is judged by their loss at the last poll."""
    from bench.faultlib.attacks import SwarmStalled

    clean, result = _finished(swarms["clean"]), swarms["off"]
    progress = clean.start_loss - clean.final_loss
    loss = result.last_loss if isinstance(result, SwarmStalled) else result.final_loss
    assert not (loss <= clean.final_loss + 0.5 * progress), (result, clean)
    if not isinstance(result, SwarmStalled):
        assert result.banned == []
