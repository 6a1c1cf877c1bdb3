"""Which growth stage a swarm is in, and the DHT prefix its hivemind optimizer uses in that stage.

Why a prefix per stage: peers in different stages hold tensors of different shapes, so they must never meet in a
round, a progress count or a state download. hivemind keys all three by the optimizer's ``run_id`` (``<prefix>_
progress``, ``<prefix>_grad_averager``, ``<prefix>_state_averager``), so each stage gets its own prefix. Stage 0's
prefix is the run_id itself: a run without a schedule (one stage) keeps exactly the keys it had before stages
existed. Records that are the run's and not a stage's (``<run_id>_metrics``, bans, the config) keep the run_id.

Why the stage follows from the global step and nothing else: every peer, whenever it joins, sees the same step and
computes the same stage, so no record has to announce a switch and no forged record can cause one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from peer.config import ModelSpec

Stages = Sequence[tuple[int, ModelSpec]]


def stage_prefix(run_id: str, stage: int) -> str:
    """The hivemind prefix of ``stage``: the run_id for stage 0, ``<run_id>-stage<k>`` after the k-th switch."""
    if stage < 0:
        raise ValueError(f"a stage index is >= 0, got {stage}")
    return run_id if stage == 0 else f"{run_id}-stage{stage}"


def stage_at(stages: Stages, step: int) -> int:
    """The index of the stage the swarm is in at global ``step``: the last one whose ``at_step`` it has reached
    (``stages`` as ``peer.config.model_stages`` lists them: stage 0 at step 0, steps increasing)."""
    index = 0
    for i, (at_step, _) in enumerate(stages):
        if step >= at_step:
            index = i
    return index


def stage_matches(stages: Stages, stage: int, step: int) -> bool:
    """Whether a record that says it trains growth stage ``stage`` at global ``step`` agrees with the schedule: the
    stage exists and ``step`` lies in it, from its ``at_step`` up to the next stage's ``at_step`` included (a peer
    reaches that step in the old stage and reports it there until it has grown). A stage no schedule has, or one the
    step is not in, comes from a peer that is broken or lies (e.g. a high step without the switch it implies)."""
    if not 0 <= stage < len(stages) or step < stages[stage][0]:
        return False
    return stage + 1 == len(stages) or step <= stages[stage + 1][0]


def swarm_step(steps: Iterable[int]) -> int:
    """The swarm's global step as a joiner reads it off the peers' records: the highest one (0 with none). Why the
    highest: a record is refreshed every few seconds and a slow peer's lags, but no honest peer is ahead of the
    swarm, and a step past a switch means that stage's keys are the ones in use."""
    return max(steps, default=0)
