"""What a peer serves to a state download (``GuardedStateAverager.get_current_state``) is a snapshot of one moment
between steps: not the live tensors, and never the parameters of one step under the epoch of another. Found by the
``all_leave`` fault scenario (a newcomer served "step 10" one Adam step away from the checkpoint of step 10). A real
hivemind averager on a loopback DHT node."""

import threading
from concurrent.futures import ThreadPoolExecutor

import hivemind
import pytest
import torch

from peer.swarm.overrides.guard import AveragerGuard
from peer.swarm.overrides.state_averager import GuardedStateAverager


class GatedSGD(torch.optim.SGD):
    """SGD whose ``step`` waits for ``gate``: holds a step open so that a download can arrive in the middle of it."""

    def __init__(self, params, gate: threading.Event):
        super().__init__(params, lr=0.5)
        self.gate = gate

    def step(self, closure=None):
        assert self.gate.wait(60), "the test never opened the gate"
        return super().step(closure)


@pytest.fixture
def averager():
    dht = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    gate = threading.Event()
    gate.set()
    averager = GuardedStateAverager(
        guard=AveragerGuard(),
        dht=dht,
        optimizer=lambda ps: GatedSGD(ps, gate),
        params=[torch.nn.Parameter(torch.ones(16))],
        prefix="served_state_test",
        offload_optimizer=True,  # as the peers' sync mode: the optimizer's copies are what is served
        custom_gradients=True,
        start=True,
    )
    averager.gate = gate
    try:
        yield averager
    finally:
        gate.set()
        averager.shutdown()
        dht.shutdown()


def _set_gradient(averager, value: float) -> None:
    for param in (p for group in averager.optimizer.param_groups for p in group["params"]):
        param.grad = torch.full_like(param, value)


@pytest.mark.timeout(120)
def test_served_tensors_do_not_change_with_the_parameters_after_they_were_taken(averager):
    metadata, tensors, _ = averager.get_current_state()
    served = averager.optimizer.param_groups[0]["params"][0]
    with torch.no_grad():
        served.add_(1.0)  # what the next step does to the peer's tensors while the download still streams
    assert metadata["epoch"] == 0
    assert torch.equal(tensors[0], torch.ones(16))


@pytest.mark.timeout(120)
def test_a_download_during_a_step_is_served_after_it_with_that_steps_epoch(averager):
    _set_gradient(averager, 1.0)
    averager.gate.clear()
    with ThreadPoolExecutor(2) as pool:
        stepping = pool.submit(averager.step, increment_epoch=True, optimizer_step=True)
        for _ in range(600):  # hivemind raises the epoch first, then runs the optimizer step (held at the gate)
            if averager.local_epoch == 1:
                break
            threading.Event().wait(0.05)
        assert averager.local_epoch == 1
        download = pool.submit(averager.get_current_state)
        threading.Event().wait(1.0)
        assert not download.done(), "a state was served in the middle of a step"
        averager.gate.set()
        stepping.result(timeout=60)
        metadata, tensors, _ = download.result(timeout=60)
    assert metadata["epoch"] == 1
    assert torch.allclose(tensors[0], torch.full((16,), 0.5))  # 1 - lr * grad: the step's parameters
