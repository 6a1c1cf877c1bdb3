"""Robust aggregation of one averaged part: CenteredClip (Karimireddy et al. 2021; BTARD, Gorbunov et al. 2022).

hivemind's butterfly all-reduce splits every tensor into parts and makes each peer the *reducer* of some parts: the
reducer receives every sender's copy of its parts, averages them and sends each sender back ``average - its copy``.
A reducer therefore holds exactly what CenteredClip needs, so (as in BTARD) we replace the mean per part:

1. contributions with a non-finite value (or a non-finite / negative weight) are dropped;
2. each sender's claimed weight (samples accumulated) is capped at ``max_weight_ratio`` times the median weight of
   the *other* senders, so a liar claiming 10⁶ samples cannot outvote everyone;
3. starting from the coordinate-wise median v₀ (robust while honest senders are a majority), iterate
   ``v ← v + Σ wᵢ·min(1, τ/‖xᵢ − v‖)·(xᵢ − v) / Σ wᵢ`` a few times.

Choice of τ: ``τ = clip_factor × median_i ‖xᵢ − v₀‖``, each distance scaled by ``sqrt(wᵢ / median w)`` (a mean
over fewer samples is noisier by ``1/sqrt(w)``; unscaled, a slow honest peer would be clipped every round). The
median distance is a robust estimate of how far honest contributions normally lie from the centre (an attacker's
huge distance does not move it while honest peers are a majority), so every honest contribution within
``clip_factor`` typical spreads passes unclipped; when nothing is clipped the first iteration lands exactly on the
weighted mean, which is then a fixed point: without outliers the result *is* hivemind's mean. An outlier moves the
result by at most ``wᵢ·τ / Σⱼ≠ᵢ wⱼ`` whatever its norm (×1000 or more): with 1 attacker among 4 equal peers that
is τ/3 = 2/3 of a typical spread with the default clip_factor 2 (in high dimension honest distances concentrate tightly
around their median, so 2× is a wide margin) and the bans that then give repeat offenders weight 0. τ is fixed
during the iterations (as in BTARD's analysis) and never below ``rel_floor × ‖v₀‖``: when honest copies are almost
identical (parameters after a synchronous step) the median distance is ~0, and plain fp16 rounding (relative error
~5e-4, the default codec) would count as "clipped"; a difference below the codec's own error is not evidence.

With one or two senders there is no majority to define "outlier", so the reducer returns the plain weighted mean of
the finite contributions (non-finite ones are still dropped) and gives no verdict (``EXCLUDED``: a verdict of
"accepted" would reset an attacker's streak every time it lands in a pair). A group of two is guarded on the
receiving side instead (``peer.swarm.overrides``): a peer does not apply a round whose average has a norm more than
``round_norm_ratio`` times its own over *all* its tensors — honest copies of one model's gradients or parameters
never do that, a ×1000 attacker always does — and that check is the pair's verdict on the other peer (``CLIPPED``
when it fails, else ``ACCEPTED``).
The check cannot be made per part: measured on the demo model, honest gradient parts differ by far more
than 10× in norm (rows of the word embedding that one peer's batch used and the other's did not; a key bias, whose
gradient is 0 in exact arithmetic, is 0 on one peer and 1e-10 on the other), and refusing such parts left two honest
peers with different parameters.

Evidence for bans is weighed over the whole round for the same reason. In a real model's round some part of some
honest sender is always a little beyond τ (measured: 3 of 4 honest demo peers had 1–10 of 444 parts clipped in one
round), so "clipped in some part" would ban honest peers. A sender's round counts as ``CLIPPED`` only when clipping
removed more than ``evidence_fraction`` of its squared (noise-scaled) distance from the aggregate, summed over every
part it sent: an attacker whose copy is far off loses almost all of it, an honest peer a sliver. Measured on real
demo-model gradients (3 honest peers plus one copy, fp16 wire, 444 parts): honest peers lost at most 1.0e-2 of their
distance; a ×1000 copy lost 1.00, a plain sign flip 0.87, a ×3 copy 0.85 — hence the default 0.25.
Parameters (state rounds) need one more margin: honest copies are nearly equal, so τ sits at its floor (1e-3 of the
norm), and a slow honest peer that averages while one optimizer step behind (seen in the 4-peer attack scenario on a
loaded machine: an honest peer banned for "clipped state") is beyond it everywhere. One AdamW step moves a weight by
about lr (2e-4) per coordinate, under 1 % of a typical weight matrix's norm; so for evidence only the distance beyond
``max(τ, evidence_floor × ‖aggregate‖)`` counts (5 %). Gradient rounds are unaffected (honest gradients lie farther
apart than 5 % of their mean, so τ is the larger). In state rounds clipping is no evidence at all
(``ClipSettings.for_state``): they carry the optimizer statistics too, where an honest peer whose gradient rounds
failed can be any multiple of the aggregate away (two were banned in soaks, with a 5 % and a 50 % floor). Clipping
still bounds what a state contribution does to the average; a non-finite one, or a pair's failed whole-round norm
check, is still evidence, and the fault suite's attackers (which corrupt gradients and state) are banned on their
gradient rounds.

Per sender the reducer records an outcome (accepted / clipped / non_finite) for the rejection ledger
(``peer.swarm.bans``); zero-weight senders (hivemind's "tag along") are ``excluded``: not evidence either way.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

import torch
from hivemind.averaging.partition import AllreduceException, BannedException, TensorPartReducer

logger = logging.getLogger(__name__)


class Outcome(str, Enum):  # noqa: UP042 - StrEnum would change str(outcome), which logs and reports print
    """What the reducer did with one sender's contribution; ordered from harmless to worst."""

    ACCEPTED = "accepted"
    EXCLUDED = "excluded"  # zero weight: took no part, not evidence either way
    CLIPPED = "clipped"
    NON_FINITE = "non_finite"


SEVERITY = {Outcome.ACCEPTED: 0, Outcome.EXCLUDED: 0, Outcome.CLIPPED: 1, Outcome.NON_FINITE: 2}
INCRIMINATING = frozenset({Outcome.CLIPPED.value, Outcome.NON_FINITE.value})  # outcomes that count toward a ban


def worst(a: Outcome, b: Outcome) -> Outcome:
    """The more incriminating of two outcomes (a sender's round outcome is its worst part's)."""
    if a is Outcome.ACCEPTED and b is Outcome.EXCLUDED:
        return b
    return b if SEVERITY[b] > SEVERITY[a] else a


@dataclass(frozen=True)
class ClipSettings:
    """Knobs of CenteredClip (``SwarmSpec.clip_factor`` etc.); the defaults are what the tests and the bench use."""

    clip_factor: float = 2.0  # τ = clip_factor × median (noise-scaled) distance to the initial centre
    iterations: int = 5
    max_weight_ratio: float = 8.0  # a sender's weight ≤ this × the median weight of the others
    rel_floor: float = 1e-3  # τ ≥ rel_floor × ‖centre‖ (below the fp16 codec's own error)
    round_norm_ratio: float = 5.0  # a robust round whose average's norm exceeds this × ours is not applied
    evidence_fraction: float = 0.25  # a round is CLIPPED evidence when clipping removed more of the sender's distance
    evidence_floor: float = 0.05  # ...counting only distance beyond max(τ, this × ‖aggregate‖) per part
    # a state averager's first rounds are no evidence (clipping still applies): peers that start together take their
    # first steps alone, each on its own gradients, and their parameters agree only after a few state rounds. An
    # honest peer of a 4-peer soak was banned for "clipped state in 3 rounds in a row" 26 s after start
    state_grace_rounds: int = 10
    # whether a round that clipped a sender counts against it (CLIPPED); off in state rounds (``for_state``). A state
    # round also carries the optimizer statistics (``sync_optimizer_state``), where an honest peer can be any multiple
    # of the aggregate away: peers whose gradient rounds succeed hold identical Adam moments, one whose rounds failed
    # holds moments of its own gradients, and in rows the others' batches never touched theirs are ~0 and its are not.
    # No evidence floor tells that peer from an attacker: two honest soak peers were banned for "clipped state in 3
    # rounds in a row" two minutes in (with the floor at 5 % and again at 50 % of the aggregate's norm)
    clipping_is_evidence: bool = True

    def for_state(self) -> ClipSettings:
        """These settings as a state averager's reducer uses them: clipping still bounds every contribution, but is
        no evidence against the sender; non-finite contributions and a pair's whole-round norm check still are, and
        an attacker corrupting its gradients too is caught there."""
        return replace(self, clipping_is_evidence=False)


@dataclass
class ClipResult:
    value: torch.Tensor  # the aggregate (NaN-filled when no finite contribution arrived)
    outcomes: list[Outcome]  # one per input row
    tau: float = 0.0
    used_weights: list[float] = field(default_factory=list)
    # per input row, in noise-scaled units: squared distance from the aggregate, and the part of it clipping removed
    # (``max(0, d - τ)²``); the reducer sums both over a round to weigh the evidence against a sender
    distance_sq: list[float] = field(default_factory=list)
    clipped_sq: list[float] = field(default_factory=list)


def cap_weights(weights: Sequence[float], max_ratio: float) -> list[float]:
    """Caps each weight at ``max_ratio`` × the median of the *other* positive weights (unchanged when alone)."""
    capped = []
    for i, w in enumerate(weights):
        others = [o for j, o in enumerate(weights) if j != i and o > 0]
        if w > 0 and others:
            w = min(w, max_ratio * float(torch.tensor(others, dtype=torch.float64).median()))
        capped.append(w)
    return capped


@torch.no_grad()
def centered_clip(
    contributions: Sequence[torch.Tensor],
    weights: Sequence[float],
    settings: ClipSettings = ClipSettings(),
) -> ClipResult:
    """CenteredClip over same-shaped ``contributions`` with sample ``weights``; pure (inputs are not modified).

    Rows with weight 0 take no part (hivemind's "tag along with zero weight") and are ``EXCLUDED``."""
    if not contributions:
        raise ValueError("centered_clip needs at least one contribution")
    shape = contributions[0].shape
    outcomes = [Outcome.ACCEPTED] * len(contributions)
    usable: list[int] = []
    for i, (x, w) in enumerate(zip(contributions, weights, strict=True)):
        if x.shape != shape:
            raise ValueError(f"contribution {i} has shape {tuple(x.shape)}, expected {tuple(shape)}")
        if not math.isfinite(w) or w < 0 or not bool(torch.isfinite(x).all()):
            outcomes[i] = Outcome.NON_FINITE
        elif w == 0:
            outcomes[i] = Outcome.EXCLUDED
        else:
            usable.append(i)
    if not usable:
        return ClipResult(torch.full(shape, float("nan")), outcomes)

    w = torch.tensor(cap_weights([float(weights[i]) for i in usable], settings.max_weight_ratio), dtype=torch.float64)
    x = torch.stack([contributions[i].reshape(-1).to(torch.float64) for i in usable])
    w_norm = w / w.sum()
    if len(usable) <= 2:
        # no majority: the mean, and no verdict on anyone (the receiving side's RoundNormCheck gives one for a pair)
        for i in usable:
            outcomes[i] = Outcome.EXCLUDED
        mean = (w_norm[:, None] * x).sum(0)
        return ClipResult(mean.to(contributions[0].dtype).reshape(shape), outcomes, used_weights=w.tolist())

    # distances in "noise units": a mean over w samples deviates ~1/sqrt(w) from the truth, so a sender's distance
    # is scaled by sqrt(w_i / median w) before it is compared with tau (equal weights: plain CenteredClip)
    scale = (w / w.median()).sqrt()
    v = x.median(dim=0).values
    tau = settings.clip_factor * float(((x - v).norm(dim=1) * scale).median())
    tau = max(tau, settings.rel_floor * float(v.norm()))
    for _ in range(settings.iterations):
        diff = x - v
        scaled = diff.norm(dim=1) * scale
        coeffs = torch.where(scaled > tau, tau / scaled.clamp_min(1e-300), torch.ones_like(scaled))
        step = ((w_norm * coeffs)[:, None] * diff).sum(0)
        v = v + step
        if float(step.norm()) <= 1e-12 * max(1.0, float(v.norm())):
            break
    scaled = (x - v).norm(dim=1) * scale
    distance_sq, clipped_sq = [0.0] * len(contributions), [0.0] * len(contributions)
    beyond = max(tau, settings.evidence_floor * float(v.norm()))
    for row, i in enumerate(usable):
        distance_sq[i] = float(scaled[row]) ** 2
        clipped_sq[i] = max(0.0, float(scaled[row]) - beyond) ** 2
        if scaled[row] > tau * (1 + 1e-9):
            outcomes[i] = Outcome.CLIPPED
    value = v.to(contributions[0].dtype).reshape(shape)
    return ClipResult(value, outcomes, tau=tau, used_weights=w.tolist(), distance_sq=distance_sq, clipped_sq=clipped_sq)


OutcomeSink = Callable[[dict[int, Outcome]], None]


class CenteredClipReducer(TensorPartReducer):
    """A drop-in ``TensorPartReducer`` that keeps every sender's copy of the current part and reduces it with
    ``centered_clip`` instead of a running sum.

    Same protocol as hivemind's: parts are reduced in order, a sender that fails (``on_sender_failed``) stops
    counting from the part it did not send (the runner bans senders the gate refuses that way), ``finalize`` cancels
    waiters. When every part is reduced (or the reducer is finalized), ``on_round_outcomes``
    receives each sender's outcome for the round, keyed by sender index: ``NON_FINITE`` if any part was,
    ``CLIPPED`` if clipping removed more than ``evidence_fraction`` of its distance summed over its parts (see the
    module docstring: one clipped part is not evidence), ``EXCLUDED`` for a zero-weight sender, else ``ACCEPTED``."""

    def __init__(
        self,
        part_shapes: Sequence[torch.Size],
        num_senders: int,
        settings: ClipSettings = ClipSettings(),
        on_round_outcomes: OutcomeSink | None = None,
    ):
        self.settings = settings
        self.on_round_outcomes = on_round_outcomes
        self.contributions: dict[int, tuple[torch.Tensor, float]] = {}
        self.round_outcomes: dict[int, Outcome] = {}  # worst per-part outcome, clipping left out (weighed below)
        self.distance_sq: dict[int, float] = {}
        self.clipped_sq: dict[int, float] = {}
        self._reported = False
        super().__init__(part_shapes, num_senders)

    def reset_accumulators(self) -> None:
        self.contributions = {}
        super().reset_accumulators()

    async def accumulate_part(
        self, sender_index: int, part_index: int, tensor_part: torch.Tensor, weight: float = 1.0
    ) -> torch.Tensor:
        """Store this sender's copy of the part, wait for all others, return the robust aggregate."""
        assert 0 <= sender_index < self.num_senders, "invalid sender index"
        assert 0 <= part_index < self.num_parts, "invalid part index"
        self.num_parts_received[sender_index] += 1

        while part_index > self.current_part_index:
            await asyncio.wait(
                {self.current_part_future, asyncio.create_task(self.finished.wait())},
                return_when=asyncio.FIRST_COMPLETED,
            )
            if self.finished.is_set():
                raise AllreduceException(f"attempted to aggregate part in a finalized {self.__class__.__name__}")
        if self.sender_failed_after[sender_index] != float("inf"):
            raise BannedException(f"sender {sender_index} was banned in background")
        assert part_index == self.current_part_index

        current_part_future = self.current_part_future
        if part_index < self.sender_failed_after[sender_index]:
            self.contributions[sender_index] = (tensor_part, float(weight))
            self.current_part_accumulated_from += 1
            self.check_current_part_finished()
        return await current_part_future

    def check_current_part_finished(self) -> None:
        assert self.current_part_accumulated_from <= self.num_current_senders
        if self.current_part_accumulated_from != self.num_current_senders:
            return
        senders = sorted(self.contributions)
        if senders:
            result = centered_clip(
                [self.contributions[s][0] for s in senders], [self.contributions[s][1] for s in senders], self.settings
            )
            for row, (sender, outcome) in enumerate(zip(senders, result.outcomes, strict=True)):
                if outcome is Outcome.CLIPPED:
                    outcome = Outcome.ACCEPTED
                self.round_outcomes[sender] = worst(self.round_outcomes.get(sender, Outcome.ACCEPTED), outcome)
                if result.distance_sq:
                    self.distance_sq[sender] = self.distance_sq.get(sender, 0.0) + result.distance_sq[row]
                    self.clipped_sq[sender] = self.clipped_sq.get(sender, 0.0) + result.clipped_sq[row]
            value = result.value
        else:
            value = torch.full(self.part_shapes[self.current_part_index], float("nan"))
        self.current_part_future.set_result(value)
        self.reset_accumulators()

    def outcomes(self) -> dict[int, Outcome]:
        """Each sender's outcome for the round so far (see the class docstring)."""
        result = {}
        for sender, outcome in self.round_outcomes.items():
            distance = self.distance_sq.get(sender, 0.0)
            removed = self.clipped_sq.get(sender, 0.0)
            clipped = distance > 0 and removed > self.settings.evidence_fraction * distance
            if outcome is Outcome.ACCEPTED and clipped and self.settings.clipping_is_evidence:
                outcome = Outcome.CLIPPED
            result[sender] = outcome
        return result

    def finalize(self) -> None:
        was_finished = self.finished.is_set()
        super().finalize()
        if not was_finished and not self._reported and self.on_round_outcomes is not None:
            self._reported = True
            try:
                self.on_round_outcomes(self.outcomes())
            except Exception:  # the ledger must never break an all-reduce round
                logger.exception("could not record the round's outcomes")


@dataclass
class RoundNormCheck:
    """The whole-round guard (what protects groups with two usable senders): a round's updates are held back, then
    applied only if ``‖local + update‖ ≤ ratio × ‖local‖`` over all tensors together.

    Why whole-round: two honest copies of one model's gradients (or parameters) have comparable norms as vectors,
    while single parts of them do not (a key bias's gradient is 0 on one peer and 1e-10 on the other; word-embedding
    rows one batch used and the other did not differ 100×). An average of ours with a ×1000 copy has ~500× our norm.
    Why hold back rather than undo: the updates arrive tensor by tensor; keeping them costs one copy of the averaged
    tensors per robust round. Not applying is safe: it is what a peer does when it finds no group."""

    ratio: float
    held: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def hold(self, tensor: torch.Tensor, update: torch.Tensor) -> None:
        self.held.append((tensor, update))

    def norms(self) -> tuple[float, float]:
        """(‖local‖, ‖local + update‖) over every held tensor, in float64."""
        local = sum(float(t.double().square().sum()) for t, _ in self.held)
        averaged = sum(float((t.double() + u.double()).square().sum()) for t, u in self.held)
        return local**0.5, averaged**0.5

    def passes(self) -> bool:
        local, averaged = self.norms()
        return local == 0.0 or averaged <= self.ratio * local
