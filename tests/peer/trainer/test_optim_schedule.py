import math

import pytest
import torch

from peer.config import TrainSpec
from peer.trainer import Lamb, lr_factor, make_optimizer, make_scheduler, param_groups


def test_no_weight_decay_on_vectors():
    lin, ln = torch.nn.Linear(4, 3), torch.nn.LayerNorm(3)
    groups = param_groups([lin.weight, lin.bias, ln.weight, ln.bias], 0.01)
    assert [len(g["params"]) for g in groups] == [1, 3]
    assert groups[0]["weight_decay"] == 0.01 and groups[1]["weight_decay"] == 0.0
    opt = make_optimizer([lin.weight, lin.bias], TrainSpec(optimizer="adamw", weight_decay=0.1, lr=0.5))
    assert isinstance(opt, torch.optim.AdamW)
    # Zero gradient: AdamW moves only by decoupled weight decay, so the bias must not move at all.
    lin.weight.grad, lin.bias.grad = torch.zeros_like(lin.weight), torch.zeros_like(lin.bias)
    w0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    opt.step()
    assert torch.allclose(lin.weight, w0 * (1 - 0.5 * 0.1)) and torch.equal(lin.bias, b0)


def test_param_group_dicts_pass_through_in_order_as_hivemind_requires():
    lin = torch.nn.Linear(4, 3)
    groups = param_groups([lin.weight, lin.bias], 0.01)
    for name in ("adamw", "lamb"):
        opt = make_optimizer([dict(g) for g in groups], TrainSpec(optimizer=name, weight_decay=0.01))
        assert [g["params"] for g in opt.param_groups] == [[lin.weight], [lin.bias]]
        assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]


def test_lamb_step_by_hand():
    p = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||p|| = 5
    p.grad = torch.tensor([[1.0, -2.0]])
    opt = Lamb([p], lr=0.1, eps=0.0, weight_decay=0.0)
    opt.step()
    # First bias-corrected Adam step = sign(g); ||update|| = sqrt(2); trust ratio 5/sqrt(2).
    expected = torch.tensor([[3.0, 4.0]]) - 0.1 * (5 / math.sqrt(2)) * torch.tensor([[1.0, -1.0]])
    assert torch.allclose(p.detach(), expected, atol=1e-6)
    q = torch.nn.Parameter(torch.tensor([2.0]))
    q.grad = torch.tensor([-3.0])
    opt = make_optimizer([q], TrainSpec(optimizer="lamb", lr=0.1, adam_eps=0.0))
    opt.step()  # a vector: no trust ratio, no decay: the plain Adam step of -lr*sign(g)
    assert torch.allclose(q.detach(), torch.tensor([2.1]))


def test_warmup_then_linear_decay():
    assert [lr_factor(s, 4, 12) for s in (0, 3, 4, 8, 12, 20)] == [0.25, 1.0, 1.0, 0.5, 0.0, 0.0]
    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = make_optimizer([p], TrainSpec(lr=1.0, warmup_steps=2, total_steps=6))
    sched = make_scheduler(opt, TrainSpec(lr=1.0, warmup_steps=2, total_steps=6))
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])
