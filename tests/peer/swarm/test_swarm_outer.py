"""DiLoCo's outer step on its own (pure tensor arithmetic, no network)."""

import torch

from peer.swarm.codecs import make_compression
from peer.swarm.outer import OuterNesterov


def test_outer_step_with_lr_one_and_no_momentum_keeps_the_averaged_parameters():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    outer = OuterNesterov([p], lr=1.0, momentum_factor=0.0)
    with torch.no_grad():
        p.copy_(torch.tensor([0.5, 3.0]))  # what the all-reduce left
    outer.step()
    assert torch.equal(p.detach(), torch.tensor([0.5, 3.0]))
    assert torch.equal(outer.anchor[0], torch.tensor([0.5, 3.0]))


def test_outer_nesterov_follows_the_formula_over_two_rounds():
    p = torch.nn.Parameter(torch.tensor([0.0]))
    outer = OuterNesterov([p], lr=0.7, momentum_factor=0.9)
    with torch.no_grad():
        p.copy_(torch.tensor([-1.0]))  # pseudo-gradient delta = anchor - averaged = 1
    outer.step()
    # m = 1; update = delta + 0.9 m = 1.9; p = 0 - 0.7 * 1.9
    assert torch.allclose(p.detach(), torch.tensor([-1.33]))
    assert torch.allclose(outer.momentum[0], torch.tensor([1.0]))
    with torch.no_grad():
        p.copy_(torch.tensor([-1.33 - 0.5]))  # second round: delta = 0.5
    outer.step()
    # m = 0.9 + 0.5 = 1.4; update = 0.5 + 0.9 * 1.4 = 1.76; p = -1.33 - 0.7 * 1.76
    assert torch.allclose(p.detach(), torch.tensor([-1.33 - 1.232]))
    assert torch.allclose(outer.anchor[0], p.detach())


def test_reset_anchor_takes_downloaded_parameters_as_the_round_start():
    p = torch.nn.Parameter(torch.tensor([1.0]))
    outer = OuterNesterov([p], lr=0.7, momentum_factor=0.9)
    with torch.no_grad():
        p.copy_(torch.tensor([5.0]))
    outer.reset_anchor()
    outer.step()  # no local progress since the download: nothing moves
    assert torch.equal(p.detach(), torch.tensor([5.0]))


def test_compression_names_map_to_codecs():
    for name in ("none", "fp16", "scaled_fp16", "uniform8bit", "minmax8bit", "blockwise8bit"):
        codec = make_compression(name)
        assert type(codec).__module__.startswith(("hivemind.compression", "peer.swarm.codecs"))
    assert type(make_compression("fp16")).__name__ == "Float16Compression"


def test_a_background_round_is_the_blocking_outer_step_plus_the_steps_taken_during_it():
    torch.manual_seed(0)
    start, averaged = torch.randn(5), torch.randn(5)
    during = 0.01 * torch.randn(5)  # local progress made while the round ran
    blocking_p = torch.nn.Parameter(start.clone())
    blocking = OuterNesterov([blocking_p], lr=0.7, momentum_factor=0.9)
    background_p = torch.nn.Parameter(start.clone())
    background = OuterNesterov([background_p], lr=0.7, momentum_factor=0.9)
    for _ in range(2):  # two rounds, so the momentum enters
        with torch.no_grad():
            blocking_p.copy_(averaged)
            snapshot = [averaged.clone()]  # what the peer had when the round started...
            background_p.copy_(averaged + during)  # ...and what it has when the round lands
        blocking.step()
        background.apply_round([averaged], None, snapshot)
        assert torch.allclose(background.anchor[0], blocking.anchor[0], atol=1e-6)
        assert torch.allclose(background_p.detach(), blocking_p.detach() + during, atol=1e-6)
        averaged = background.anchor[0] - 0.1


def test_a_background_round_takes_the_averaged_momentum():
    p = torch.nn.Parameter(torch.tensor([0.0]))
    outer = OuterNesterov([p], lr=1.0, momentum_factor=0.5)
    outer.momentum[0].fill_(100.0)  # this peer's own, stale momentum
    outer.apply_round([torch.tensor([-1.0])], [torch.tensor([2.0])], [torch.tensor([0.0])])
    # m = 0.5 * 2 + 1 = 2; update = 1 + 0.5 * 2 = 2; anchor = 0 - 2
    assert torch.allclose(outer.momentum[0], torch.tensor([2.0]))
    assert torch.allclose(outer.anchor[0], torch.tensor([-2.0]))
    assert torch.allclose(p.detach(), torch.tensor([-2.0]))


def test_state_compression_uses_8_bits_for_the_momentum_only():
    from hivemind.compression import CompressionInfo, TensorRole

    from peer.config import SwarmSpec
    from peer.swarm.modes.diloco import make_state_compression

    codec = make_state_compression(SwarmSpec(compression="fp16"))
    t = torch.randn(100)
    param = codec.choose_compression(CompressionInfo.from_tensor(t, role=TensorRole.PARAMETER))
    extra = codec.choose_compression(CompressionInfo.from_tensor(t, role=TensorRole.UNSPECIFIED))
    assert type(param).__name__ == "Float16Compression"
    assert type(extra).__name__ == "MinMax8BitQuantization"


def test_momentum_sync_defaults_to_catch_up_only_with_background_rounds():
    import pytest

    from peer.config import SwarmSpec
    from peer.errors import UserError
    from peer.swarm.modes.diloco import momentum_sync

    assert momentum_sync(SwarmSpec(averaging="diloco", overlap_rounds=True)) == "catch_up"
    assert momentum_sync(SwarmSpec(averaging="diloco")) == "average"
    assert momentum_sync(SwarmSpec(averaging="diloco", overlap_rounds=True, momentum_sync="average")) == "average"
    with pytest.raises(UserError, match="catch_up needs swarm.overlap_rounds"):
        momentum_sync(SwarmSpec(averaging="diloco", momentum_sync="catch_up"))


class FinishedRound:
    """What ``DecentralizedAverager.step(wait=False)`` hands back, once the round is over: the gathered epochs."""

    def __init__(self, gathered: dict) -> None:
        self.gathered = gathered

    def done(self) -> bool:
        return True

    def result(self, timeout=None) -> dict:
        return self.gathered


def test_a_round_that_met_peers_of_another_round_is_dropped():
    from peer.swarm.overlap import BackgroundRound

    p = torch.nn.Parameter(torch.tensor([5.0]))
    round_ = BackgroundRound(
        averager=None, params=[p], momentum=[torch.tensor([1.0])], average_momentum=True, timeout=1
    )
    round_.snapshot, round_.own_momentum, round_.epoch = [torch.tensor([4.0])], [torch.tensor([0.5])], 3
    round_.control = FinishedRound({"us": 3, "them": 2})  # matchmaking paired our round 3 with their round 2
    averaged, momentum = round_.finish()
    assert averaged[0].item() == 4.0 and momentum[0].item() == 0.5  # our own values from the round's start
    assert not round_.last_averaged and round_.rounds_averaged == 0 and not round_.pending
