"""The swarm's half of mid-run growth: at the global step where the next stage starts, every peer stops, grows its
parameters and optimizer state, and continues at the same step under the next stage's keys.

Why nothing is downloaded: in sync mode every peer applied the same averaged gradients, so every peer holds the
same parameters and (with ``sync_optimizer_state``, or identical histories) the same Adam moments; growth is a pure,
deterministic function of them (``peer.growth.midrun.grow_stage``), so each peer computes the next stage's state by
itself and the peers agree after the switch as closely as they did before it (the wire codec's error).

The order matters: the old optimizer is shut down first (hivemind's ``shutdown`` waits for a delayed step, so the
state read next is the step's result), all but its state averager when ``growth.switch_grace`` > 0: that one goes
on serving the old stage's final state under the old keys for the grace (``peer.swarm.stage_grace``), for the
coordinator's pre-switch checkpoint; a joiner that downloads it grows by itself at its first step. Without a grace,
``withdraw_state_sharing`` stops late joiners from downloading the old stage's state); then the state is grown,
then the next stage's optimizer is built under ``stage_prefix`` and the grown state loaded into it at the same
global step (``apply_swarm_state``: epoch, lr schedule and state-sharing priority follow). Last, the peer waits
(bounded) until the new progress tracker sees as many peers as the last round of the old stage had: a peer that is
first to switch would otherwise count only its own samples and take the new stage's first global step alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from peer.growth.midrun import grow_stage
from peer.modeling import PretrainingModels
from peer.run.state_format import SwarmState, apply_swarm_state, wire_names
from peer.swarm.shutdown import StopSignal
from peer.swarm.stage_fit import Memory, check_next_stage_fits, measured_memory
from peer.swarm.stage_grace import GraceServer
from peer.swarm.stage_keys import Stages
from peer.swarm.swarm_optimizer import SwarmOptimizer
from peer.trainer.stages import loaded_sizes

logger = logging.getLogger(__name__)

BuildOptimizer = Callable[[int, list[torch.nn.Parameter]], SwarmOptimizer]
"""``(stage index, the stage's parameters) -> the stage's started SwarmOptimizer`` (built under its prefix)."""


def sizes_text(models: PretrainingModels) -> str:
    """hidden x heads x FFN x layers, as ``peer train`` reports a switch."""
    return "x".join(map(str, loaded_sizes(models)))


def named_optimizer_state(opt: SwarmOptimizer, models: PretrainingModels) -> dict[str, dict[str, torch.Tensor]]:
    """The hivemind optimizer's per-parameter state keyed by parameter name. Its torch optimizer steps offloaded
    copies of the parameters in sync mode; they are paired with the model's by position (``wire_names``)."""
    averager = opt.opt.state_averager
    names = wire_names(opt, list(models.named_parameters()))
    own = [p for group in averager.optimizer.param_groups for p in group["params"]]
    states = {}
    for name, param in zip(names, own, strict=True):
        state = averager.optimizer.state.get(param)
        if state:
            states[name] = {k: v for k, v in state.items() if torch.is_tensor(v)}
    return states


def keep_step_dtypes(grown: dict[str, dict[str, torch.Tensor]], source: dict[str, dict[str, torch.Tensor]]) -> None:
    """Puts each grown ``step`` back in its optimizer's dtype (growth computes in fp64): the torch optimizer loads
    ``step`` as it comes, and a joiner decodes the state download against its own optimizer's layout."""
    dtypes = {s["step"].dtype for s in source.values() if torch.is_tensor(s.get("step"))}
    if len(dtypes) != 1:
        return
    dtype = dtypes.pop()
    for state in grown.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].to(dtype)


@dataclass
class StageSwitcher:
    """A peer's position in the run's growth schedule and the switch to the next stage (see the module docstring).

    ``stages``: ``peer.config.model_stages`` of the run; ``index``: the stage the peer trains now; ``models``: the
    pair the objective reads (its modules are replaced in place, so the objective trains the grown ones);
    ``build``: the stage's optimizer; ``depth_method``: the run's ``growth.depth_method``; ``settle_timeout``: how
    long a peer waits for the others in the new stage before it trains on. ``current``: the optimizer the peer holds
    now (None between the old one's shutdown and the new one's start), for the session to shut down at the end.
    ``grace``: the run's ``growth.switch_grace``, seconds the old stage's final state stays downloadable after a
    switch (``peer.swarm.stage_grace``; 0: none); ``close`` ends that at once, when the peer leaves."""

    stages: Stages
    index: int
    models: PretrainingModels
    build: BuildOptimizer
    depth_method: str
    settle_timeout: float
    current: SwarmOptimizer | None = None
    grace: float = 0.0
    serving: list[GraceServer] = field(default_factory=list)
    measure: Callable[[torch.device], Memory] = measured_memory  # tests fake a small device with it

    def due(self, global_step: int) -> bool:
        """Whether the next stage starts at or before ``global_step``."""
        return self.index + 1 < len(self.stages) and global_step >= self.stages[self.index + 1][0]

    def params(self) -> list[torch.nn.Parameter]:
        return self.models.parameters()

    def switch(self, opt: SwarmOptimizer, stop: StopSignal) -> SwarmOptimizer:
        """Grows from stage ``index`` to the next at ``opt``'s global step and returns the new stage's optimizer,
        holding the grown state at the same step; ``opt`` is shut down."""
        step, peers = opt.global_step, max(1, opt.peers_in_last_round())
        old, new = self.stages[self.index][1], self.stages[self.index + 1][1]
        # before anything is shut down or grown: a peer that cannot hold the next stage leaves with one line
        check_next_stage_fits(self.models, new, self.index + 1, self.params()[0].device, self.measure)
        before = sizes_text(self.models)
        self.current = None
        if self.grace > 0:  # waits for a delayed step; the old stage's state stays downloadable for the grace
            self.serving.append(GraceServer(opt.retire(), self.grace, self.index))
        else:
            opt.shutdown()  # waits for a delayed step; late joiners no longer download the old stage's state
        states = named_optimizer_state(opt, self.models)
        grown, grown_states = grow_stage(self.models, states, old, new, self.depth_method)
        keep_step_dtypes(grown_states, states)
        self.models.discriminator, self.models.generator = grown.discriminator, grown.generator
        self.index += 1
        logger.info(
            "growing to stage %d at global step %d: %s -> %s (%d parameters)",
            self.index,
            step,
            before,
            sizes_text(self.models),
            sum(p.numel() for p in self.params()),
        )
        new_opt = self.build(self.index, self.params())
        self.current = new_opt
        named = list(self.models.named_parameters())
        state = SwarmState(step=step, parameters=dict(named), optimizer=grown_states)
        apply_swarm_state(new_opt, wire_names(new_opt, named), state)
        settle(new_opt, peers, self.settle_timeout, stop)
        logger.info("stage %d started at global step %d", self.index, new_opt.global_step)
        return new_opt

    def close(self) -> None:
        """Stops serving every old stage's final state (the peer is leaving)."""
        for server in self.serving:
            server.close()


def settle(opt: SwarmOptimizer, peers: int, timeout: float, stop: StopSignal) -> int:
    """Announces this peer in ``opt``'s progress tracker until the tracker sees ``peers`` peers, ``timeout``
    seconds pass or ``stop`` is set; returns the number it saw (a peer that did not switch with us is not waited
    for beyond ``timeout``)."""
    tracker = opt.opt.tracker
    deadline = time.monotonic() + timeout
    seen = 0
    while not stop.is_set():
        tracker.announce()
        seen = tracker.refresh_now(timeout=5.0)
        if seen >= peers:
            return seen
        if time.monotonic() >= deadline:
            logger.warning("%d of the %d peers of the last round are in the new stage after %.0f s: training on",
                           seen, peers, timeout)  # fmt: skip
            return seen
        stop.wait(0.5)
    return seen
