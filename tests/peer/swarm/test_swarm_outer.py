"""DiLoCo's outer step on its own (pure tensor arithmetic, no network)."""

import torch

from peer.swarm.averaging import OuterNesterov, make_compression


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


def test_compression_names_map_to_hivemind_codecs():
    for name in ("none", "fp16", "scaled_fp16", "uniform8bit", "blockwise8bit"):
        codec = make_compression(name)
        assert type(codec).__module__.startswith("hivemind.compression")
    assert type(make_compression("fp16")).__name__ == "Float16Compression"
