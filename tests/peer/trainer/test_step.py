"""The one training step (peer.trainer.step): accumulation, clipping, the finite guard and fp16 loss scaling, on a
tiny linear model whose gradients can be computed by hand."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.overrides import TorchFunctionMode

from peer.objectives import ObjectiveOutput
from peer.trainer.hardware import Precision
from peer.trainer.step import StepSpec, TrainStep, eval_due, grad_norm, run_step


def linear(seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(4, 1)


def data(n: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return {"x": x, "y": x.sum(1, keepdim=True) * 3.0}


def mse(model: torch.nn.Linear, scale: float = 1.0):
    def objective(batch: dict) -> ObjectiveOutput:
        err = model(batch["x"]) - batch["y"]
        loss = scale * err.pow(2).mean()
        return ObjectiveOutput(loss, {"loss": loss.detach(), "abs_error": err.abs().mean().detach()})

    return objective


def split(batch: dict, parts: int):
    n = batch["x"].shape[0] // parts
    return iter([{k: v[i * n : (i + 1) * n] for k, v in batch.items()} for i in range(parts)])


def test_two_accumulated_micro_batches_give_the_gradient_and_loss_of_their_union():
    whole, accumulated = linear(), linear()
    batch = data(8)
    one = TrainStep(mse(whole), list(whole.parameters()), StepSpec(grad_accum=1))
    two = TrainStep(mse(accumulated), list(accumulated.parameters()), StepSpec(grad_accum=2))
    c1 = one.backward(iter([batch]))
    c2 = two.backward(split(batch, 2))
    assert c2.samples == c1.samples == 8
    assert c2.loss == pytest.approx(c1.loss, rel=1e-6)
    assert set(c2.metrics) == {"abs_error"}, "the objective's metrics are kept, the loss is Computed.loss"
    for a, b in zip(whole.parameters(), accumulated.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_clipping_brings_a_huge_gradient_to_clip_norm_and_reports_both_norms():
    model = linear()
    step = TrainStep(mse(model, scale=1e6), list(model.parameters()), StepSpec(clip_norm=1.0))
    computed = step.backward(iter([data(8)]))
    assert step.unscale(computed)
    before, after = step.clip()
    assert before > 1e3
    assert after == pytest.approx(1.0, rel=1e-4)
    assert grad_norm(list(model.parameters())) <= 1.0 + 1e-4


def test_a_gradient_below_clip_norm_is_left_as_it_is():
    model = linear()
    step = TrainStep(mse(model, scale=1e-6), list(model.parameters()), StepSpec(clip_norm=1.0))
    step.backward(iter([data(8)]))
    grads = [p.grad.clone() for p in model.parameters()]
    before, after = step.clip()
    assert before == after < 1.0
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters(), strict=True))


def test_a_non_finite_loss_stops_the_step_before_any_backward_and_the_optimizer_never_steps():
    model = linear()
    params = list(model.parameters())
    bad = {"x": torch.full((2, 4), float("inf")), "y": torch.zeros(2, 1)}
    step = TrainStep(mse(model), params, StepSpec(grad_accum=2))
    stepped = []
    outcome = run_step(step, iter([bad, data(2)]), lambda: stepped.append(1))
    assert not outcome.stepped and not stepped
    assert not outcome.computed.healthy and math.isnan(outcome.computed.loss)
    assert all(p.grad is None for p in params)


def test_a_bare_loss_tensor_is_an_objective_without_metrics():
    model = linear()
    step = TrainStep(lambda b: (model(b["x"]) - b["y"]).pow(2).mean(), list(model.parameters()), StepSpec())
    computed = step.backward(iter([data(4)]))
    assert computed.healthy and computed.metrics == {} and computed.samples == 4


def sqrt_at_zero(param: torch.nn.Parameter, at_zero: bool):
    """A finite loss whose gradient is infinite when ``at_zero`` (d sqrt(x)/dx at 0), finite otherwise."""

    def objective(batch: dict) -> torch.Tensor:
        shift = 0.0 if at_zero else 1.0
        return (param + shift).sqrt().sum() + 0.0 * batch["x"].sum()

    return objective


def test_fp16_loss_scaling_skips_an_overflowed_step_and_lowers_the_scale_then_steps_a_finite_one():
    param = torch.nn.Parameter(torch.zeros(3))
    spec = StepSpec(device_type="cpu", precision=Precision(torch.float16, scaled=True))
    opt = torch.optim.SGD([param], lr=0.1)
    inf_step = TrainStep(sqrt_at_zero(param, at_zero=True), [param], spec)
    assert inf_step.scaler is not None
    scale = inf_step.scaler.get_scale()
    outcome = run_step(inf_step, iter([data(2)]), opt.step)
    assert not outcome.stepped
    assert torch.equal(param.detach(), torch.zeros(3)), "an overflowed step must not change the parameters"
    assert inf_step.scaler.get_scale() == scale * 0.5, "GradScaler's backoff after an overflow"

    opt.zero_grad(set_to_none=True)
    finite = TrainStep(sqrt_at_zero(param, at_zero=False), [param], spec)
    finite.scaler = inf_step.scaler  # one scaler lives as long as the loop
    outcome = run_step(finite, iter([data(2)]), opt.step)
    assert outcome.stepped
    # d/dp sqrt(p + 1) at 0 = 0.5, un-scaled before the step: SGD moves each entry by lr * 0.5
    torch.testing.assert_close(param.detach(), torch.full((3,), -0.05))
    assert finite.scaler.get_scale() == scale * 0.5, "no growth before growth_interval finite steps"


def test_evaluation_is_due_every_eval_every_local_steps_and_never_at_zero():
    assert [s for s in range(1, 11) if eval_due(s, 4)] == [4, 8]
    assert not any(eval_due(s, 0) for s in range(10))
    assert not eval_due(0, 4)


def test_grad_accum_below_one_is_refused():
    with pytest.raises(ValueError, match="grad_accum"):
        StepSpec(grad_accum=0)


def test_the_single_process_trainer_clips_through_the_same_step():
    """peer train's loop reports the norm before clipping and steps with the clipped gradient."""
    model = linear()
    params = list(model.parameters())
    step = TrainStep(mse(model, scale=1e6), params, StepSpec(clip_norm=0.5, grad_accum=2))
    seen = []
    outcome = run_step(step, itertools.islice(iter(lambda: data(4), None), 2), lambda: seen.append(grad_norm(params)))
    assert outcome.stepped and outcome.grad_norm > 1e3
    assert seen[0] == pytest.approx(0.5, rel=1e-4) and outcome.clipped_norm == pytest.approx(0.5, rel=1e-4)


class DeviceReads(TorchFunctionMode):
    """Counts the tensor reads that make the host wait for the device (on a GPU): ``float``, ``bool``, ``int``,
    ``.item()``, ``.tolist()``, ``.cpu()``."""

    READS = {"__float__", "__bool__", "__int__", "__index__", "item", "tolist", "cpu"}

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS:
            self.reads.append(func.__name__)
        return func(*args, **(kwargs or {}))


def mlp_with_metrics(layers: int, metrics: int):
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(layers)])

    def objective(batch: dict) -> ObjectiveOutput:
        err = model(batch["x"]).sum(1, keepdim=True) - batch["y"]
        loss = 1e3 * err.pow(2).mean()
        return ObjectiveOutput(loss, {f"m{i}": err.abs().mean().detach() * i for i in range(metrics)})

    return model, objective


@pytest.mark.parametrize("layers,metrics", [(1, 1), (6, 5)])
def test_a_step_waits_for_the_device_once_per_micro_batch_for_its_loss_and_metrics_and_once_after_backward(
    layers, metrics
):
    model, objective = mlp_with_metrics(layers, metrics)
    step = TrainStep(objective, list(model.parameters()), StepSpec(grad_accum=2, clip_norm=1.0))
    with DeviceReads() as counted:
        outcome = run_step(step, split(data(8), 2), lambda: None)
    assert outcome.stepped and outcome.grad_norm > 1.0 >= outcome.clipped_norm * (1 - 1e-6), "it clipped"
    # per micro-batch: the loss (the finite guard) and the metrics in one read; after backward: the gradients'
    # finite check and norm in one read; none per parameter tensor or per metric, none for clipping
    assert len(counted.reads) == 2 * 2 + 1, counted.reads


def test_clipping_with_the_norm_read_by_the_finite_check_is_clip_grad_norm_to_the_bit():
    model, objective = mlp_with_metrics(3, 1)
    reference, reference_objective = mlp_with_metrics(3, 1)
    step = TrainStep(objective, list(model.parameters()), StepSpec(clip_norm=0.5))
    assert step.unscale(step.backward(iter([data(8)])))
    before, _ = step.clip()
    TrainStep(reference_objective, list(reference.parameters()), StepSpec()).backward(iter([data(8)]))
    expected = float(torch.nn.utils.clip_grad_norm_(list(reference.parameters()), 0.5))
    assert before == expected
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)
