"""peer.swarm.state_check: what a downloaded state must pass before it replaces ours."""

import torch

from peer.swarm.state_check import MAX_CATCH_UP_JUMP, missing_tensors, relative_jump, state_problem


def _state(*values: float) -> list[torch.Tensor]:
    return [torch.full((3, 2), v) for v in values]


def test_a_finite_state_near_ours_passes():
    own = _state(1.0, -2.0)
    assert state_problem(_state(1.01, -2.02), own) is None
    assert state_problem(_state(5.0, 5.0)) is None  # a joiner: nothing to compare with


def test_nan_or_inf_anywhere_is_refused_also_in_optimizer_statistics():
    tensors = [*_state(1.0, 2.0), torch.tensor([0.0, float("inf")])]
    assert "tensor 2" in state_problem(tensors)
    assert state_problem([torch.tensor([float("nan")])]) is not None
    assert state_problem([torch.tensor([1, 2])]) is None  # integer tensors (step counters) are not checked


def test_a_catch_up_refuses_parameters_far_from_ours():
    own = _state(1.0, -2.0)
    assert relative_jump(_state(-1.0, 2.0), own) == 2.0  # sign flip
    assert "1e+03x" in state_problem(_state(1001.0, -2002.0), own)  # x1000
    assert state_problem(_state(-1.0, 2.0), own) is not None
    assert relative_jump(_state(1.0), own) == float("inf")  # a different model
    assert 0.05 < MAX_CATCH_UP_JUMP < 2.0


def test_a_download_that_ended_early_is_counted_short_and_a_whole_one_is_not():
    """Parameters and extras lead, then the optimizer tensors that hivemind's metadata points at (here 2 of them,
    indices 0 and 1, around a plain value); a stream cut after the first optimizer tensor is 1 short."""
    metadata = dict(
        epoch=5,
        optimizer_metadata=[
            dict(type="tensor", index=0),
            dict(type="value", value=0.9),
            dict(type="tensor", index=1),
        ],
    )
    whole = [torch.zeros(2)] * 3 + [torch.zeros(2)] * 2  # 3 parameters (no extras), 2 optimizer tensors
    assert missing_tensors(metadata, whole, num_leading=3) == 0
    assert missing_tensors(metadata, whole[:4], num_leading=3) == 1
    assert missing_tensors(metadata, whole[:2], num_leading=3) == 3
    assert missing_tensors(dict(epoch=5), whole[:3], num_leading=3) == 0  # no optimizer state (plain SGD)
    assert missing_tensors(None, [], num_leading=3) == 3
