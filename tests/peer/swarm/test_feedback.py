"""peer.swarm.feedback: with error feedback the 4-bit pseudo-gradients a peer sends add up to what it computed."""

import torch

from peer.swarm.blockwise4bit import BLOCK, Blockwise4BitQuantization
from peer.swarm.feedback import ErrorFeedback

ROUNDS = 50


def constant_pseudo_gradient() -> torch.Tensor:
    """Values between the codec's levels (so one round loses something on almost every value), 8 blocks."""
    torch.manual_seed(0)
    return torch.randn(8 * BLOCK) * 1e-3


def one_round_bound(g: torch.Tensor) -> float:
    """What one round's residual can hold: half a step, ``absmax / 14``, of what was sent, ``g`` plus the previous
    residual; r <= (max|g| + r) / 14 gives r <= max|g| / 13."""
    return float(g.abs().max()) / 13


def test_with_feedback_the_sum_over_rounds_is_n_times_the_true_value_within_one_rounds_error():
    g = constant_pseudo_gradient()
    feedback = ErrorFeedback([g])
    total = torch.zeros_like(g)
    for _ in range(ROUNDS):
        (sent,) = feedback.compress([g])
        feedback.commit()
        total += sent
    # total = ROUNDS * g - residual, and the residual is at most one round's error
    assert float((total - ROUNDS * g).abs().max()) <= one_round_bound(g)
    assert torch.allclose(total, ROUNDS * g - feedback.residual[0], atol=1e-6)


def test_without_feedback_the_same_rounds_drift_by_the_rounding_times_n():
    g = constant_pseudo_gradient()
    codec = Blockwise4BitQuantization()
    total = sum(codec.roundtrip(g) for _ in range(ROUNDS))
    drift = float((total - ROUNDS * g).abs().max())
    assert drift > 10 * one_round_bound(g), drift  # the same rounding every round: it adds up


def test_a_round_that_applied_our_raw_values_keeps_the_residual_and_a_download_clears_it():
    g = constant_pseudo_gradient()
    feedback = ErrorFeedback([g])
    feedback.compress([g])
    feedback.commit()
    kept = feedback.residual[0].clone()
    assert float(kept.abs().max()) > 0
    feedback.compress([g])
    feedback.drop()  # e.g. a round mixed with another epoch's: the raw pseudo-gradient was applied
    assert torch.equal(feedback.residual[0], kept)
    feedback.compress([g])
    feedback.reset()  # a state download: what our old trajectory lost is not carried into the swarm's state
    feedback.commit()  # nothing pending any more
    assert float(feedback.residual[0].abs().max()) == 0
    assert feedback.nbytes == g.numel() * 4
