"""A multi-GPU peer: a ``torchrun --nproc-per-node N`` group of processes that is *one* peer of the swarm.

Only rank 0 (the leader) talks to the swarm: it starts the DHT and the hivemind.Optimizer, downloads the state and
publishes the metrics. The other ranks (followers) only compute. Every local step, in the same order on every rank:

1. each rank computes its own batch's gradients;
2. one reduce sums the gradients onto the leader, which divides by N (the group's mean gradient) and reports
   ``batch_size × N`` samples to hivemind; each rank's "my loss was not finite" and "I was asked to stop" flags
   travel in the same collective;
3. the leader steps and broadcasts its decision (skip, stop, parameters changed, global step, mean loss);
4. when the parameters may have changed, the leader broadcasts them.

Why not ``DistributedDataParallel``: the leader's parameters are changed by hivemind outside any forward pass
(offloaded and delayed optimizer steps, DiLoCo's inner and outer steps, state downloads, restores of the last good
state), so the only way the group can never drift is that the one rank that owns them sends them. The bytes per step
are those of one all-reduce (a reduce plus a broadcast), and in "sync" mode without delayed steps the broadcast only
happens on global steps. Stopping is a group decision: a signal to any rank, or a limit on the leader, ends every
rank after the same step, so the leader leaves the DHT cleanly and every process exits 0.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

logger = logging.getLogger(__name__)

BUCKET_BYTES = 32 * 2**20  # gradients / parameters are moved in flat buckets of this size (fewer, larger messages)


@dataclass(frozen=True)
class RankInfo:
    """Where this process sits in its peer's group (torchrun's environment)."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_leader(self) -> bool:
        return self.rank == 0


def rank_from_env(env: dict[str, str] | None = None) -> RankInfo | None:
    """The torchrun rank of this process; None when it is not part of a group of two or more."""
    env = dict(os.environ) if env is None else env
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    rank = int(env["RANK"])
    return RankInfo(rank=rank, world_size=world, local_rank=int(env.get("LOCAL_RANK", rank)))


@dataclass(frozen=True)
class Vote:
    """What every rank says after its backward pass, summed over the group (valid on the leader)."""

    mean_loss: float
    healthy: bool  # every rank's loss and gradients were finite
    stop: bool  # some rank was asked to stop (SIGINT / SIGTERM)


@dataclass(frozen=True)
class Decision:
    """The leader's verdict on one local step, which every rank follows."""

    skipped: bool
    stop: bool
    params_changed: bool
    global_step: int
    mean_loss: float


@dataclass(frozen=True)
class SetupReport:
    """Sent by the leader once it has joined the swarm (or failed to): followers need its data seed and must not
    wait forever for a leader that gave up."""

    ok: bool
    error: str = ""
    seed: int = 0
    shapes: tuple[tuple[int, ...], ...] = ()


def _buckets(tensors: Sequence[torch.Tensor], cap: int = BUCKET_BYTES) -> Iterator[list[int]]:
    """Indices of ``tensors`` grouped into runs of one dtype and device of at most ``cap`` bytes (one tensor may be
    larger on its own)."""
    current: list[int] = []
    size = 0
    for i, t in enumerate(tensors):
        nbytes = t.numel() * t.element_size()
        first = tensors[current[0]] if current else None
        if current and (size + nbytes > cap or t.dtype != first.dtype or t.device != first.device):
            yield current
            current, size = [], 0
        current.append(i)
        size += nbytes
    if current:
        yield current


class PeerGroup:
    """The process group of one peer's ranks. Every method is a collective: all ranks call them in the same order,
    which the leader's ``train_loop`` and the followers' ``follow_loop`` guarantee."""

    def __init__(self, info: RankInfo, device: torch.device, timeout_s: float) -> None:
        self.info = info
        self.device = device
        self._reported = False
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, rank=info.rank, world_size=info.world_size, timeout=timedelta(seconds=timeout_s)
        )
        logger.info("rank %d of %d in this peer's %s group on %s", info.rank, info.world_size, backend, device)

    @property
    def world_size(self) -> int:
        return self.info.world_size

    @property
    def is_leader(self) -> bool:
        return self.info.is_leader

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    # set-up: the leader joins the swarm alone, then tells the followers how it went
    def report_setup(self, report: SetupReport) -> None:
        """Leader only; at most once (a failure after a success report is for torchrun to handle)."""
        if self._reported:
            return
        self._reported = True
        dist.broadcast_object_list([report], src=0)

    def wait_for_setup(self) -> SetupReport:
        """Follower: blocks until the leader has joined the swarm (state downloaded) or failed."""
        box: list[SetupReport | None] = [None]
        dist.broadcast_object_list(box, src=0)
        report = box[0]
        assert report is not None
        return report

    # one local step
    @torch.no_grad()
    def reduce_step(self, params: Sequence[torch.Tensor], loss: float, healthy: bool, stop: bool) -> Vote:
        """Sums the gradients of every rank onto the leader and sets its ``.grad`` to their mean; a rank whose loss
        or gradients were not finite sends zeros and its flag, which makes the leader skip the step."""
        grads = [
            p.grad if healthy and p.grad is not None else torch.zeros_like(p, memory_format=torch.contiguous_format)
            for p in params
        ]
        for bucket in _buckets(grads):
            flat = _flatten_dense_tensors([grads[i] for i in bucket])
            dist.reduce(flat, dst=0)
            if self.is_leader:
                flat.div_(self.world_size)
                for i, mean in zip(bucket, _unflatten_dense_tensors(flat, [grads[i] for i in bucket]), strict=True):
                    if params[i].grad is None:
                        params[i].grad = mean.clone()
                    else:
                        params[i].grad.copy_(mean)
        flags = [loss if healthy else 0.0, 0.0 if healthy else 1.0, float(stop)]
        votes = torch.tensor(flags, dtype=torch.float64, device=self.device)
        dist.reduce(votes, dst=0)
        return self._vote_from(votes)

    def _vote_from(self, votes: torch.Tensor) -> Vote:
        loss_sum, bad, stop = (float(v) for v in votes.cpu())
        n_healthy = self.world_size - int(bad)
        return Vote(mean_loss=loss_sum / max(n_healthy, 1), healthy=bad == 0, stop=stop > 0)

    def decide(self, decision: Decision | None) -> Decision:
        """The leader sends ``decision``; followers pass None and receive it."""
        if self.is_leader:
            assert decision is not None
            values = [decision.skipped, decision.stop, decision.params_changed, decision.global_step]
            packed = torch.tensor([*map(float, values), decision.mean_loss], dtype=torch.float64, device=self.device)
        else:
            packed = torch.zeros(5, dtype=torch.float64, device=self.device)
        dist.broadcast(packed, src=0)
        skipped, stop, changed, step, loss = packed.cpu().tolist()
        return Decision(bool(skipped), bool(stop), bool(changed), int(step), float(loss))

    @torch.no_grad()
    def sync_params(self, params: Sequence[torch.Tensor]) -> None:
        """Every rank ends with the leader's parameters, bit for bit."""
        for bucket in _buckets(params):
            tensors = [params[i].detach() for i in bucket]
            flat = _flatten_dense_tensors(tensors)
            dist.broadcast(flat, src=0)
            if not self.is_leader:
                for target, value in zip(tensors, _unflatten_dense_tensors(flat, tensors), strict=True):
                    target.copy_(value)

    def dismiss(self, params: Sequence[torch.Tensor], global_step: int) -> None:
        """Leader: ends the group's loop without a step of its own (a limit was reached or it was asked to stop).
        The followers are waiting in ``reduce_step`` with a batch computed; their gradients are discarded."""
        self.reduce_step(params, 0.0, healthy=True, stop=True)
        self.decide(Decision(skipped=True, stop=True, params_changed=False, global_step=global_step, mean_loss=0.0))


def collective_timeout(load_state_timeout: float, averaging_timeout: float, matchmaking_time: float) -> float:
    """Longest a follower may wait in one collective: the leader may be inside a state download or an averaging
    round (hivemind bounds both). At least 30 minutes, the set-up (growth, checkpoint download) can be long too."""
    return max(1800.0, load_state_timeout + averaging_timeout + matchmaking_time + 300.0)


def params_digest(params: Sequence[torch.Tensor]) -> str:
    """A short sha256 of the parameters' bytes: equal digests mean bit-identical parameters, which is how an
    operator (and the tests) check that the ranks of one peer, or two peers after a round, agree."""
    import hashlib

    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
