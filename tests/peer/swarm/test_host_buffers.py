"""Pinned host buffers for sync mode's offloaded optimizer (peer.swarm.host_buffers and the averagers' overrides).

There is no GPU here, so these check the decision and the CPU path: pinning is for CUDA devices only, nothing is
pinned on CPU, and a CPU peer's sync-mode training is bit-identical to hivemind's own copy methods (the overrides
reorder the copies and add fences, which on CPU must change no value). The CUDA path itself is checked by
``bench/gpu_check.sh`` (``offloaded_buffers`` in its JSON), which also runs this file and ``test_good_state.py`` on
the GPU (``cuda_tests`` in its JSON)."""

from __future__ import annotations

import pytest
import torch
from hivemind.optim.grad_averager import GradientAverager
from hivemind.optim.state_averager import TrainingStateAverager

from peer.config import PeerSettings, SwarmSpec, TrainSpec
from peer.swarm.averaging import build_swarm_optimizer
from peer.swarm.dht import start_dht
from peer.swarm.host_buffers import CopyFence, host_buffers_pinned
from peer.swarm.metrics import make_validators
from peer.swarm.overrides.averagers import AveragerKinds
from peer.swarm.overrides.gradient_averager import GuardedGradientAverager
from peer.swarm.overrides.state_averager import GuardedStateAverager
from peer.trainer import make_optimizer


def test_host_buffers_are_pinned_only_for_a_cuda_device_that_is_there(monkeypatch):
    for device in ("cpu", torch.device("cpu"), "mps", "meta"):
        assert not host_buffers_pinned(device), device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not host_buffers_pinned("cuda"), "no CUDA runtime: nothing can be page-locked"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert host_buffers_pinned("cuda") and host_buffers_pinned(torch.device("cuda", 0))
    assert not host_buffers_pinned("cpu"), "a CPU model has no copy to speed up, CUDA or not"


def test_the_copy_fence_does_nothing_off_cuda():
    fence = CopyFence("cpu")
    assert not fence.active
    fence.mark()
    fence.wait()  # no event, no CUDA call: this would raise on a build without CUDA otherwise


class HivemindGradientCopies(GuardedGradientAverager):
    """The gradient averager with hivemind 1.1.12's own copy into the averaged buffers (the reference)."""

    load_accumulators_into_averager_ = GradientAverager.load_accumulators_into_averager_


class HivemindStateCopies(GuardedStateAverager):
    """The state averager with hivemind 1.1.12's own offloaded parameters and copies to the model (the reference)."""

    def _init_components(self, *args):
        self.host_copies = CopyFence("cpu")  # read by the other overrides; inactive, as on any CPU peer
        return TrainingStateAverager._init_components(self, *args)

    _apply_optimizer_parameters_ = TrainingStateAverager._apply_optimizer_parameters_


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def _train_sync_on_cpu(run_id: str, kinds: AveragerKinds) -> tuple[list[torch.Tensor], dict[str, int], int]:
    """One CPU peer in sync mode (offloaded optimizer), 6 local steps of 4 samples towards a global batch of 8:
    its final parameters, what its state averager reports pinned, and its global step."""
    signing = make_validators(run_id)
    dht = start_dht(PeerSettings(host_maddrs=["/ip4/127.0.0.1/tcp/0"]), signing.validators)
    opt = None
    try:
        model = _model()
        params = list(model.parameters())
        factory = lambda p: make_optimizer(p, TrainSpec(optimizer="adamw", warmup_steps=0, lr=1e-2))  # noqa: E731
        spec = SwarmSpec(target_batch_size=8, matchmaking_time=1.0, averaging_timeout=5.0)
        opt = build_swarm_optimizer(dht, run_id, spec, params, factory, None, batch_size=4, kinds=kinds)
        gen = torch.Generator().manual_seed(1)
        for _ in range(6):
            x = torch.randn(4, 8, generator=gen)
            (model(x) - x.sum(1, keepdim=True)).pow(2).mean().backward()
            opt.step(4)
            opt.zero_grad()
        pinned = opt.opt.state_averager.offloaded_buffers_pinned()
        return [p.detach().clone() for p in params], pinned, opt.global_step
    finally:
        if opt is not None:
            opt.shutdown()
        dht.shutdown()


@pytest.mark.timeout(240)
def test_on_cpu_nothing_is_pinned_and_sync_training_is_bit_identical_to_hiveminds_copies():
    ours, pinned, steps = _train_sync_on_cpu("pinned-ours", AveragerKinds())
    reference, _, reference_steps = _train_sync_on_cpu(
        "pinned-ref", AveragerKinds(gradient=HivemindGradientCopies, state=HivemindStateCopies)
    )
    assert steps == reference_steps >= 2, "several global steps of the offloaded optimizer were taken"
    initial = [p.detach() for p in _model().parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(ours, initial, strict=True)), "the parameters were trained"
    for a, b in zip(ours, reference, strict=True):
        assert torch.equal(a, b), f"not bit-identical: max difference {(a - b).abs().max().item()}"
    assert pinned == {"parameters": 4, "parameters_pinned": 0, "gradients": 4, "gradients_pinned": 0}, pinned
