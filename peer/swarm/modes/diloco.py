"""The "diloco" averaging mode: DiLoCo over hivemind. Each peer takes local inner-optimizer steps on every batch
(hivemind's ``use_local_updates``); an outer round starts when the swarm has processed ``inner_steps *
target_batch_size`` samples. In the round hivemind's state averager all-reduces the parameters (compressed), and we
then apply the outer SGD-Nesterov step to the pseudo-gradient ``anchor - averaged``. Why this instead of a separate
averager: averaging is linear, so averaging parameters and subtracting from the common anchor is exactly the averaged
pseudo-gradient, and we keep hivemind's matchmaking, progress tracking and state download for free. The outer
momentum buffers are ``extra_tensors`` of the state averager, so late joiners download them with the parameters, and
they are averaged each round (``momentum_sync: average``), in 8 bits by default (``momentum_compression``:
``peer.swarm.codecs.MinMax8BitQuantization``; the parameters use ``compression``, fp16): 3 bytes per parameter per
round. With the rounds in the background the default is ``momentum_sync: catch_up``: the momentum is not sent (2
bytes per parameter per round), because every peer of a round updates it from the same averaged parameters and the
same anchor, so it stays equal by itself (up to compression error); what would make it differ is a round that one
peer missed (a timeout, a dropped link) while the others averaged, and such a peer downloads the state of one that
took part (``SwarmOptimizer._catch_up``) before it trains on. (The one difference from sending pseudo-gradients:
compression error applies to parameters; fp16 keeps it below 1e-3 relative.) With ``compression: blockwise4bit``
the rounds send the pseudo-gradients themselves, 4 bits each with error feedback (``peer.swarm.overlap``,
``peer.swarm.feedback``): 0.56 bytes per parameter per round with catch_up, and it needs ``overlap_rounds`` (the
blocking round is hivemind's own, which averages the parameters).
"""

from __future__ import annotations

import logging

from hivemind.compression import CompressionBase, RoleAdaptiveCompression

from peer.config import SwarmSpec
from peer.errors import UserError
from peer.swarm.codecs import PSEUDO_GRADIENT_ONLY, make_compression
from peer.swarm.feedback import ErrorFeedback
from peer.swarm.modes.base import AveragingMode, refuse_pseudo_gradient_codec
from peer.swarm.outer import OuterNesterov
from peer.swarm.overlap import BackgroundRound
from peer.swarm.overrides.optimizer import GuardedOptimizer
from peer.swarm.round_evidence import OutcomeChannel
from peer.swarm.swarm_optimizer import SwarmOptimizer

logger = logging.getLogger(__name__)

NEVER = 2**62  # an ``average_state_every`` no epoch reaches


def make_state_compression(spec: SwarmSpec) -> CompressionBase:
    """The codec of a state-averaging round: ``spec.compression`` for the parameters and
    ``spec.momentum_compression`` for the extra tensors (DiLoCo's outer momentum, hivemind's role UNSPECIFIED).

    Why two: the parameters are averaged as values, where 8 bits would put quantisation error on the weights
    themselves; the momentum is an average of pseudo-gradients, an update, where it does not."""
    return RoleAdaptiveCompression(
        parameter=make_compression(spec.compression), default=make_compression(spec.momentum_compression)
    )


def momentum_sync(spec: SwarmSpec) -> str:
    """``SwarmSpec.momentum_sync`` resolved: None means "catch_up" with background rounds and "average" without."""
    if spec.momentum_sync is None:
        return "catch_up" if spec.overlap_rounds else "average"
    if spec.momentum_sync == "catch_up" and not spec.overlap_rounds:
        raise UserError(
            "swarm.momentum_sync: catch_up needs swarm.overlap_rounds: true (a blocking round does not say whether it "
            "averaged); use momentum_sync: average"
        )
    return spec.momentum_sync


class DiLoCoMode(AveragingMode):
    """ "diloco" (see the module docstring): local inner steps, parameters averaged every ``inner_steps *
    target_batch_size`` samples and the outer Nesterov step on the result, in the background with
    ``overlap_rounds``; the state carries one outer-momentum buffer per parameter."""

    name = "diloco"
    extras_per_parameter = 1
    # its outer momentum and anchor would have to grow with the parameters, which nothing does yet
    grows_mid_run = False

    def check(self, spec: SwarmSpec) -> None:
        if not spec.overlap_rounds:
            refuse_pseudo_gradient_codec(spec)  # the blocking round is hivemind's own, which averages the parameters

    def describe(self, spec: SwarmSpec) -> str:
        return self.name + (" with overlapped rounds" if spec.overlap_rounds else "")

    def build(self, spec: SwarmSpec, shared: dict, outcomes: OutcomeChannel | None) -> SwarmOptimizer:
        params = shared["params"]
        flat = [p for g in params for p in g["params"]] if params and isinstance(params[0], dict) else params
        outer = OuterNesterov(flat, lr=spec.outer_lr, momentum_factor=spec.outer_momentum)
        # 4-bit pseudo-gradients (check() refused them without overlap_rounds): one residual per parameter
        feedback = ErrorFeedback(flat) if spec.compression in PSEUDO_GRADIENT_ONLY else None
        if feedback is not None:
            logger.info("error feedback for %s: %.1f MB of residuals", spec.compression, feedback.nbytes / 1e6)
        average_momentum = momentum_sync(spec) == "average"
        opt = GuardedOptimizer(
            target_batch_size=spec.target_batch_size * spec.inner_steps,
            use_local_updates=True,
            delay_state_averaging=False,  # the outer step needs the averaged parameters when step() returns
            # overlapped rounds are started by SwarmOptimizer (peer.swarm.overlap), so hivemind never averages itself
            average_state_every=NEVER if spec.overlap_rounds else 1,
            state_averaging_compression=make_state_compression(spec),
            extra_tensors=outer.momentum,
            # "average": in every round (with fp16 parameters and 8-bit momentum 1.5x the bytes of the parameters
            # alone). Not averaged without a catch-up for missed rounds, two peers ended 0.18-0.49 apart after the
            # last outer step of tests/peer/swarm/test_swarm_peers.py (diloco); "catch_up" is that rule
            # (SwarmOptimizer)
            average_extras=average_momentum,
            **shared,
        )
        background = None
        if spec.overlap_rounds:
            # joiners and catch-ups get the last round's outcome, not our own steps since. Only here: with the round
            # inside step() (hivemind's own out-of-sync downloads), serving the anchor made the two peers of the
            # blocking diloco test in tests/peer/swarm/test_swarm_peers.py end 0.07-0.19 apart
            opt.state_averager.served_parameters = outer.anchor
            background = BackgroundRound(
                opt.state_averager,
                flat,
                outer.momentum,
                average_momentum=average_momentum,
                timeout=spec.averaging_timeout,
                anchor=outer.anchor,
                feedback=feedback,
            )
        return SwarmOptimizer(opt, outer, outcomes, background=background, catch_up=not average_momentum)
