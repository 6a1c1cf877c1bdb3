"""hivemind averagers that ask a ``PeerGate`` before averaging with anyone and reduce their parts robustly.

Replaces (hivemind 1.1.12): see each class (``GuardedAveragerMixin``, ``RoundCheckedDownload``,
``CancellableRounds``, ``GuardedStateAverager``).

Plugged in without touching hivemind: the gradient averager through ``hivemind.Optimizer(grad_averager_factory=)``,
the state averager (parameters: diloco's averaging, sync mode's periodic state averaging) through an Optimizer
subclass overriding ``_make_state_averager``. Both averagers run in their own forked process, so everything here
(the gate, the reducer, the outcome sink) runs there; outcomes reach the training process through ``OutcomeChannel``.

What changes against hivemind's averager, per round:
- the gate is asked on every incoming ``rpc_join_group`` / ``rpc_aggregate_part`` / ``rpc_download_state``; a
  refused peer gets hivemind's refusal (a rejection code, an empty state stream), and if it is already in our group
  it is dropped from our reducer at once (hivemind's own ``_ban_sender`` path) and our parts it should reduce are
  kept local (hivemind's ``register_failed_reducer`` path) instead of being sent to it;
- with robust averaging on, our parts are reduced by ``CenteredClipReducer`` and the averaged result we get back is
  checked: a non-finite result for a tensor leaves our local tensor (gradient / parameters) as it was this round;
  and the round is applied only if the average's norm over all tensors is within
  ``ClipSettings.round_norm_ratio`` × ours (see ``RoundNormCheck``): the guard of groups with two usable senders,
  where the reducer takes the plain mean.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import AsyncIterator  # noqa: UP035 - hivemind's ServicerBase only recognises typing's alias for streams

import hivemind
import torch
from hivemind.averaging.allreduce import AveragingMode
from hivemind.averaging.control import AveragingStage, StepControl
from hivemind.averaging.group_info import GroupInfo
from hivemind.optim.grad_averager import GradientAverager
from hivemind.optim.state_averager import TrainingStateAverager
from hivemind.p2p import P2PContext
from hivemind.proto import averaging_pb2
from hivemind.utils.asyncio import as_aiter, azip
from hivemind.utils.timed_storage import get_dht_time

from peer.memory import map_large_allocations, release_free_memory, start_memory_trace
from peer.swarm.gate import OpenGate, PeerGate
from peer.swarm.host_buffers import CopyFence, pin_shared, pinned_copy
from peer.swarm.overrides.allreduce import GatedAllReduceRunner
from peer.swarm.robust import ClipSettings, Outcome, RoundNormCheck
from peer.swarm.round_evidence import GRADIENTS, STATE, EvidenceGrace, OutcomeChannel, RoundOutcomes
from peer.swarm.state_check import state_problem

logger = logging.getLogger(__name__)


@dataclass
class AveragerGuard:
    """What both averagers of a peer share: the gate, the robust switch and settings, where outcomes go."""

    gate: PeerGate = field(default_factory=OpenGate)
    robust: bool = True
    clip: ClipSettings = field(default_factory=ClipSettings)
    channel: OutcomeChannel | None = None


class GuardedAveragerMixin:
    """The gate and robust reduction for any ``DecentralizedAverager`` subclass (listed first in the bases).

    ``_guard`` must be set before hivemind's ``__init__`` starts the averager process, hence the keyword-only
    constructor argument consumed here."""

    outcome_kind: str = STATE

    def __init__(self, *args, guard: AveragerGuard | None = None, **kwargs):
        self._guard = guard or AveragerGuard()
        self._state_grace = EvidenceGrace(self._guard.clip.state_grace_rounds)  # counted in the averager's process
        super().__init__(*args, **kwargs)

    @classmethod
    def _get_handle_name(cls, namespace: str | None, method_name: str) -> str:
        """RPC names stay hivemind's (``<prefix>::TrainingStateAverager.rpc_download_state``): hivemind names
        handlers after the class, so without this a subclass could not be called by the coordinator's state
        download (``peer.swarm.state``), by an unguarded peer, or by an attacker subclass under another name."""
        wire = next(c for c in cls.__mro__ if c.__module__.startswith("hivemind."))
        return wire._get_handle_name(namespace, method_name)

    def run(self) -> None:
        """The averager process's entry (after the fork): its large buffers are mapped one by one (peer.memory), and
        its Python allocations traced when the memory-trace diagnostic is on."""
        map_large_allocations()
        start_memory_trace(type(self).__name__)
        super().run()

    @contextlib.contextmanager
    def _register_allreduce_group(self, group_info: GroupInfo):
        """hivemind's registration of a running group, then the freed round's pages back to the OS: only once the
        group is unregistered is the round's runner (and every buffer it held) dropped. Between rounds the
        process's RSS is then what it keeps, not what the last round happened to leave (``bench/faults.py soak``)."""
        try:
            with super()._register_allreduce_group(group_info):
                yield
        finally:
            release_free_memory()

    def _clip_settings(self) -> ClipSettings:
        """The reducer's settings for this averager's rounds: in state rounds clipping is no ban evidence
        (``ClipSettings.for_state``)."""
        return self._guard.clip.for_state() if self.outcome_kind == STATE else self._guard.clip

    def _emit_outcomes(self, outcomes: dict[str, str]) -> None:
        if self._guard.channel is not None:
            if self.outcome_kind == STATE:
                outcomes = self._state_grace.filter(outcomes)
            self._guard.channel.put(RoundOutcomes(self.outcome_kind, outcomes))

    async def rpc_join_group(
        self, request: averaging_pb2.JoinRequest, context: P2PContext
    ) -> AsyncIterator[averaging_pb2.MessageFromLeader]:
        if not self._guard.gate.admits(context.remote_id):
            logger.warning(
                "refusing %s into our group: %s", context.remote_id, self._guard.gate.why_not(context.remote_id)
            )
            yield averaging_pb2.MessageFromLeader(code=averaging_pb2.PROTOCOL_VIOLATION)
            return
        async for response in super().rpc_join_group(request, context):
            yield response

    async def rpc_download_state(
        self, request: averaging_pb2.DownloadRequest, context: P2PContext
    ) -> AsyncIterator[averaging_pb2.DownloadData]:
        if not self._guard.gate.admits(context.remote_id):
            logger.warning(
                "refusing a state download by %s: %s", context.remote_id, self._guard.gate.why_not(context.remote_id)
            )
            return  # hivemind's deny: an empty stream sends the peer to the next averager
        async for message in super().rpc_download_state(request, context):
            yield message

    async def _run_allreduce_inplace_(
        self, tensors: Sequence[torch.Tensor], group_info: GroupInfo, group_id: bytes | None = None, **kwargs
    ):
        """hivemind's in-place all-reduce with our runner, and (robust) a non-finite result left unapplied.

        Starts by handing the previous round's freed buffers back to the OS (peer.memory): by now hivemind has
        dropped that round's runner, and without it this process's RSS followed the rounds up and down by tens of
        MiB and crept upward over an hour."""
        release_free_memory()
        group_id = group_info.group_id if group_id is None else group_id
        robust = self._guard.robust
        runner = GatedAllReduceRunner(
            gate=self._guard.gate,
            clip=self._clip_settings() if robust else None,
            on_outcomes=self._emit_outcomes,
            p2p=self._p2p,
            servicer_type=type(self),
            prefix=self.prefix,
            tensors=tensors,
            group_id=group_id,
            ordered_peer_ids=group_info.peer_ids,
            **kwargs,
        )
        assert group_id in self._running_groups, f"Group id {group_id} was not registered in _register_allreduce_group"
        self._running_groups[group_id].set_result(runner)

        if runner.modes[group_info.peer_ids.index(self.peer_id)] == AveragingMode.AUX:
            async for _ in runner:
                raise ValueError("aux peers should not receive averaged tensors")
            return
        if not self._round_applies(group_info):
            async for _ in runner:  # our parts are still reduced and sent: the others' rounds end as they expect
                pass
            return
        senders = sum(mode != AveragingMode.AUX for mode in runner.modes)
        # every robust round is checked as a whole, not only groups of two: a group of three where one peer has
        # weight 0 leaves two usable senders, which the reducer averages plainly (seen: an honest peer's loss went
        # to 329 in the 4-peer sign-flip scenario before this). Costs one held copy of the round's updates.
        check = RoundNormCheck(self._guard.clip.round_norm_ratio) if robust and runner.weight > 0 else None
        kept_local = 0
        async for tensor, update in azip(as_aiter(*tensors), runner):
            if robust and not bool(torch.isfinite(update).all()):
                kept_local += 1  # this tensor keeps its local value for the round
                continue
            if check is not None:
                check.hold(tensor, update)
                continue
            self._apply_update(tensor, update)
        if kept_local:
            logger.warning("averaged result not finite for %d of %d tensors: kept them local", kept_local, len(tensors))
        if check is not None:
            passed = check.passes()
            if senders == 2:  # a pair's verdict on the other peer: the evidence the reducer could not give
                verdict = (Outcome.ACCEPTED if passed else Outcome.CLIPPED).value
                self._emit_outcomes({
                    str(peer_id): verdict
                    for peer_id, mode in zip(group_info.peer_ids, runner.modes, strict=True)
                    if peer_id != self.peer_id and mode != AveragingMode.AUX
                })  # fmt: skip
            if passed:
                for tensor, update in check.held:
                    self._apply_update(tensor, update)
            else:
                local, averaged = check.norms()
                logger.warning(
                    "not applying a %s round of %d peers: the average's norm %.3g is over %g x ours (%.3g); "
                    "kept ours", self.outcome_kind, senders, averaged, check.ratio, local,
                )  # fmt: skip

    def _round_applies(self, group_info: GroupInfo) -> bool:
        """Whether this round's result is applied to our tensors at all (every member decides the same: the group's
        metadata is the same for all). By default every round is."""
        return True

    def _apply_update(self, tensor: torch.Tensor, update: torch.Tensor) -> None:
        tensor.add_(update, alpha=self._averaging_alpha)
        self.last_updated = get_dht_time()
        self._state_updated.set()


class GuardedGradientAverager(GuardedAveragerMixin, GradientAverager):
    """The gradient averager; with a model on CUDA its averaged gradients (the buffers the accumulated gradients
    cross into every global step, and the offloaded optimizer's ``.grad``) are page-locked in place
    (``peer.swarm.host_buffers``) and filled by asynchronous copies with one wait."""

    outcome_kind = GRADIENTS

    def __init__(self, parameters, *args, **kwargs):
        parameters = tuple(parameters)
        self._copies = CopyFence(parameters[0].device if parameters else "cpu")
        super().__init__(parameters, *args, **kwargs)

    def run_in_background(self, *args, **kwargs) -> None:
        """hivemind's start of the averager's process, then (CUDA) the averaged gradients page-locked: only after the
        fork, which must map them (the driver may leave registered pages out of a forked child)."""
        super().run_in_background(*args, **kwargs)
        if self._copies.active:
            with self.get_tensors() as averaged_grads:
                pinned = pin_shared(averaged_grads)
            logger.debug("page-locked %d of %d averaged gradient buffers", pinned, len(averaged_grads))

    @torch.no_grad()
    def load_accumulators_into_averager_(self):
        """hivemind 1.1.12 ``GradientAverager.load_accumulators_into_averager_`` (copy each accumulator into its
        averaged buffer, then scale it by 1 / accumulations on the host) with every copy issued before one wait.

        Why the wait: hivemind scales each buffer right after its ``copy_(non_blocking=True)``, which is safe only
        because a copy into pageable memory is synchronous; into the pinned buffers it is not, and the host would
        scale, and the averager send, what was there before. On CPU the same copies and products in another order:
        the same values."""
        grad_scale = (1.0 / self.local_times_accumulated) if self.local_times_accumulated != 0 else 0.0
        with self.get_tensors() as averaged_grads:
            for grad_acc, averaged_grad in zip(self._grad_accumulators(), averaged_grads, strict=True):
                averaged_grad.copy_(grad_acc, non_blocking=True)
            self._copies.mark()
            self._copies.wait()
            for averaged_grad in averaged_grads:
                averaged_grad.mul_(grad_scale)


LANDED_ROUND = "warmswarm_landed_round"  # key of a served state's metadata: its last averaged outer round


class RoundCheckedDownload(hivemind.DecentralizedAverager):
    """A state download that is checked (``peer.swarm.state_check``: finite, and near ours when catching up) and
    can insist on the donor's last averaged outer round being at least ``required_round``.

    Why: a peer that missed DiLoCo round ``e`` (``momentum_sync: catch_up``) needs a donor's state *after* round
    ``e`` landed there; a donor whose round is still in flight would hand it the momentum and anchor of round
    ``e - 1``, which is as wrong as its own. It sits between hivemind's ``TrainingStateAverager`` and
    ``DecentralizedAverager`` in the MRO, so a refused state is dropped before hivemind applies anything.
    ``required_round`` -1 (the default: joiners, hivemind's own catch-up) accepts any state."""

    required_round: int = -1
    landed_round: int = -1  # the last outer round averaged into this peer's state (set by SwarmOptimizer)
    refused_downloads: int = 0  # states refused for an older round
    refused_for_good: int = 0  # of which the donor was past that round's epoch: its round will not land
    accepted_downloads: int = 0  # states handed on to be loaded (round and epoch not behind)

    def load_state_from_peers(self, wait: bool = True, timeout: float | None = None):
        loaded = super().load_state_from_peers(wait=wait, timeout=timeout)
        if loaded is None or not wait:
            return loaded
        metadata = loaded[0] if isinstance(loaded[0], dict) else {}
        # a peer catching up holds the swarm's state already: the donor's may not be far from it (state_check)
        own = list(self.main_parameters) if self.required_round >= 0 else None
        problem = state_problem(loaded[1], own)
        if problem is not None:
            self.refused_downloads += 1
            logger.warning("refusing a state download: %s", problem)
            return None
        landed = metadata.get(LANDED_ROUND, -1)
        if self.required_round >= 0 and (not isinstance(landed, int) or landed < self.required_round):
            self.refused_downloads += 1
            epoch = metadata.get("epoch")
            # past the round's epoch, the donor's round is over (finished before the next began): it never lands
            self.refused_for_good += int(isinstance(epoch, int) and epoch > self.required_round)
            logger.info("the donor's last averaged outer round is %s (its epoch %s), not %d: not loading it",
                        landed, epoch, self.required_round)  # fmt: skip
            return None
        epoch = metadata.get("epoch")
        if isinstance(epoch, int) and epoch >= getattr(self, "local_epoch", 0):  # what hivemind then loads
            self.accepted_downloads += 1
            if isinstance(landed, int):
                self.landed_round = max(self.landed_round, landed)
        return loaded


class CancellableRounds(hivemind.DecentralizedAverager):
    """Keeps the handles of the state rounds begun in the background, so that one stuck looking for a group can be
    called off (``cancel_stuck_rounds``).

    Why: a peer that finds itself out of sync downloads the swarm's state, and hivemind first waits for its
    background state round, up to ``averaging_timeout``. In the ``peer_kill`` fault scenario a survivor one step
    behind at the kill waited out a round whose partner was the killed peer (its matchmaking entries outlive it,
    so the round looked for a group until the timeout, 20 s), then its next gradient round (20 s), and stepped
    39.7 s after the kill. Its own state is about to be replaced by the download, so such a round has nothing to
    give. But a round that is merely young must be left alone: calling off one that was about to assemble with a
    healthy partner left that partner looking for a group until *its* timeout, and waiting for that round at its
    next step (17 s, seen in a run of the first version of this, which called off every round still looking). So
    a round is called off only once it has looked for ``patience`` seconds without finding its group; one that
    finds it (or is exchanging tensors) is left to finish. hivemind 1.1.12 calls ``DecentralizedAverager.step``
    from ``TrainingStateAverager.schedule_step`` and ``_do`` through ``super()``: this class sits between the two
    in ``GuardedStateAverager``'s MRO."""

    def step(self, *args, **kwargs):
        control = super().step(*args, **kwargs)
        if isinstance(control, StepControl):
            rounds = [(c, began) for c, began in getattr(self, "_background_rounds", []) if not c.done()]
            self._background_rounds = [*rounds, (control, time.monotonic())]
        return control

    def cancel_stuck_rounds(self, patience: float) -> int:
        """Waits until each background round still looking for a group has looked for ``patience`` seconds (or
        found it), then cancels those that have not; returns how many were cancelled."""
        cancelled = 0
        for control, began in getattr(self, "_background_rounds", []):
            while _looking_for_group(control) and time.monotonic() < began + patience:
                time.sleep(0.05)
            if _looking_for_group(control):
                cancelled += bool(control.cancel())
        self._background_rounds = []
        return cancelled


def _looking_for_group(control: StepControl) -> bool:
    return not control.done() and control.stage in (AveragingStage.IDLE, AveragingStage.LOOKING_FOR_GROUP)


class GuardedStateAverager(GuardedAveragerMixin, TrainingStateAverager, RoundCheckedDownload, CancellableRounds):
    """The state averager; with ``average_extras=False`` its ``extra_tensors`` are shared, not averaged.

    Why the option: DiLoCo's outer Nesterov momentum is an extra tensor so that a late joiner downloads it with the
    parameters; every peer of a round applies the same averaged pseudo-gradient, so averaging the buffers costs a
    third of what a round sends (8 bits next to fp16 parameters) while changing nothing — as long as no peer misses
    a round. One that does keeps a different momentum, and its next outer steps differ (measured: two test peers
    0.18-0.49 apart after the last round), so without averaging a peer that missed one downloads a state that
    includes it (``momentum_sync: catch_up``; ``landed_round`` is served for that). The wire format of a state
    download is the same either way (parameters, extras, optimizer state)."""

    outcome_kind = STATE
    # diloco with background rounds (set by build_swarm_optimizer): the parameters served are the last round's
    # outcome, the outer anchor, not this peer's parameters with its own local steps since; see get_current_state
    served_parameters: Sequence[torch.Tensor] | None = None

    def __init__(self, *args, average_extras: bool = True, **kwargs):
        self._average_extras = average_extras  # read by hivemind's __init__ through the two methods below
        # held by step() and by get_current_state: a served state is never taken in the middle of a step
        self._serving = threading.RLock()
        super().__init__(*args, **kwargs)
        # optimizer steps taken in this process (tests check that every one took effect)
        self.optimizer_steps = 0
        self.optimizer.register_step_post_hook(self._count_optimizer_step)

    def _count_optimizer_step(self, *_) -> None:
        self.optimizer_steps += 1

    def _init_components(self, param_groups, optimizer_or_factory, scheduler_or_factory, initialize_optimizer):
        """hivemind 1.1.12 ``TrainingStateAverager._init_components``, with (CUDA, offloaded optimizer) the optimizer
        built on page-locked copies of its parameters, and every optimizer step waiting for the copies out of them.

        Why at construction: the copies hivemind hands the factory are the parameters the optimizer keeps, its state
        is keyed by, and ``_apply_optimizer_parameters_`` copies to the model every global step; pinned before the
        factory sees them, nothing has to be re-keyed. (With ``reuse_tensors`` they are the shared averaged tensors,
        pinned in place once the averager's process has started: ``run_in_background``.)"""
        main = self.main_parameters
        self.host_copies = CopyFence(main[0].device if main else "cpu")
        is_factory = callable(optimizer_or_factory) and not isinstance(optimizer_or_factory, torch.optim.Optimizer)
        if self.host_copies.active and self.offload_optimizer and not self.reuse_tensors and is_factory:
            make_optimizer = optimizer_or_factory

            def optimizer_or_factory(groups):
                pinned = [dict(group, params=[pinned_copy(p) for p in group["params"]]) for group in groups]
                return make_optimizer(pinned)

        optimizer, scheduler = super()._init_components(
            param_groups, optimizer_or_factory, scheduler_or_factory, initialize_optimizer
        )
        if self.offload_optimizer:
            optimizer.register_step_pre_hook(lambda *_: self.host_copies.wait())
        return optimizer, scheduler

    def run_in_background(self, *args, **kwargs) -> None:
        """hivemind's start of the averager's process, then (CUDA, offloaded optimizer reusing the averaged tensors)
        the optimizer's shared parameters page-locked in place, after the fork (as the gradient averager's)."""
        super().run_in_background(*args, **kwargs)
        if self.host_copies.active and self.offload_optimizer and self.reuse_tensors:
            pin_shared(p for group in self.optimizer.param_groups for p in group["params"])

    def offloaded_buffers_pinned(self) -> dict[str, int]:
        """How many of the host buffers that cross to the device are page-locked (for ``bench/gpu_check.py``):
        the offloaded optimizer's parameters and their gradients, of how many."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]] if self.offload_optimizer else []
        grads = [p.grad for p in params if p.grad is not None]
        return {
            "parameters": len(params),
            "parameters_pinned": sum(p.is_pinned() for p in params),
            "gradients": len(grads),
            "gradients_pinned": sum(g.is_pinned() for g in grads),
        }

    @torch.no_grad()
    def _apply_optimizer_parameters_(self):
        """hivemind 1.1.12 ``TrainingStateAverager._apply_optimizer_parameters_`` (offloaded parameters copied to the
        model, ``non_blocking``), then a mark on ``host_copies`` instead of a wait.

        Why no wait here: the model's next kernels follow the copies on the same stream, so the device needs none,
        and the host goes on (the next batch, the progress record) while the copies run. The host waits only before
        it next writes those parameters: the optimizer step (a pre-hook), an averaged round, a downloaded state."""
        super()._apply_optimizer_parameters_()
        self.host_copies.mark()

    def _apply_averaging_results_(self):
        """hivemind's application of a finished round, under the optimizer's lock: with ``delay_optimizer_step``
        hivemind steps the optimizer in its executor while the training thread applies a round here, and the two
        must not interleave on the same tensors. (Why rounds apply by the delta rule:
        ``GuardedOptimizer._make_state_averager``.) A copy of the parameters to the model still running must
        finish before the round changes them (``host_copies``)."""
        with self.lock_optimizer:
            self.host_copies.wait()
            super()._apply_averaging_results_()

    def load_state_from_peers(self, **kwargs):
        """hivemind's download into the optimizer's parameters, once a copy out of them still running has finished
        (``host_copies``)."""
        self.host_copies.wait()
        return super().load_state_from_peers(**kwargs)

    def step(self, *args, **kwargs):
        with self._serving:
            return super().step(*args, **kwargs)

    def get_current_state(self):
        """hivemind's state as a snapshot of one moment between steps, with ``landed_round`` in the metadata and,
        with DiLoCo's background rounds, the anchor as the parameters.

        Why a snapshot (hivemind 1.1.x ``TrainingStateAverager.get_current_state``): hivemind hands the averager
        process the live tensors (on CPU, ``.cpu()`` is the tensor itself and the pipe moves its storage to shared
        memory), which the averager serialises while it streams them, after the lock is released and the epoch was
        read. A step taken meanwhile went out under the old epoch: a newcomer served "step 10" was 2.1e-4 (one
        Adam step) from the checkpoint it had loaded at step 10 (the ``all_leave`` fault scenario), and a coordinator
        checkpoint can be torn the same way. So the tensors are copied, and the epoch read, while neither a step
        (``step``: epoch, optimizer step, averaged results) nor the inner optimizer (``lock_optimizer``: a delayed
        or local-update step) nor an outer step (``lock_averaged_tensors``) is under way. The cost: one copy of
        the state per download while it streams, and a download waits for the step in progress to end.

        Why the anchor: it is what the swarm agreed on in the last round, with the momentum of that round; our
        parameters are that plus our own local steps since. A joiner or a peer catching up that started from our
        parameters would take our local steps as its starting point and then into its next pseudo-gradient against
        the others' anchor (measured: 0.16-0.19 apart from the swarm two rounds after a catch-up in
        tests/peer/swarm/test_swarm_peers.py); the coordinator's checkpoint is then the swarm's state too."""
        with torch.no_grad(), self._serving, self.lock_optimizer:
            metadata, tensors, infos = super().get_current_state()  # the epoch, under the same locks
            with self.lock_averaged_tensors:  # SwarmOptimizer writes the anchor (and the outer step) under this lock
                tensors = [t.detach().clone() for t in tensors]
                anchors = [a.detach().cpu().clone() for a in self.served_parameters or ()]
        metadata[LANDED_ROUND] = self.landed_round
        if self.served_parameters is not None:
            n = len(self.served_parameters)
            assert all(a.shape == t.shape for a, t in zip(anchors, tensors[:n], strict=True)), "anchor layout"
            tensors = [*anchors, *tensors[n:]]
        return metadata, tensors, infos

    def _round_applies(self, group_info: GroupInfo) -> bool:
        """With the delta rule (sync mode's background state rounds), a round whose senders began it at different
        epochs is not applied, by any of them.

        Why: each peer decides at its own epoch transition whether to begin a state round (hivemind's
        ``_update_global_epoch`` skips it while its previous round is still ending), and matchmaking does not look
        at the epoch. A peer whose last round ended a few ms too late began its round one epoch later, with a
        snapshot taken one optimizer step later, and the group's average then mixed parameters and Adam moments one
        step apart: a peer ended half an Adam step off the travel of its steps (0.025 of 0.47 in
        ``test_sync_state_rounds_never_undo_an_optimizer_step``, 2 to 3 runs in 6 on a quiet machine). The epochs
        are what hivemind gathers for a state round (``gather=local_epoch``); an aux peer sends nothing, so its epoch
        does not count. Not applied, the averaged buffers stay our snapshot and the delta rule adds nothing."""
        if not self.delta_rule_averaging:
            return True
        epochs = gathered_epochs(group_info.gathered, self.serializer)
        if len(set(epochs)) <= 1:
            return True
        logger.info("not applying a state round that mixes epochs %s: its peers began it at different steps",
                    sorted(set(epochs), key=str))  # fmt: skip
        return False

    def _local_tensors(self):
        tensors = tuple(super()._local_tensors())
        return iter(tensors if self._average_extras else tensors[: len(tensors) - len(self.extra_tensors)])

    def _init_tensor_infos(self):
        infos = tuple(super()._init_tensor_infos())
        return infos if self._average_extras else infos[: len(infos) - len(self.extra_tensors)]


def gathered_epochs(gathered: Sequence[bytes], serializer) -> list:
    """The epochs a state round's senders gathered (hivemind's per-peer ``[bandwidth, mode, user data]``, the user
    data being the epoch), aux peers left out; an entry that is not an int (another caller's gather) comes as its
    repr, so it differs from every epoch."""
    epochs = []
    for blob in gathered:
        _bandwidth, mode, user_data = serializer.loads(blob)
        if AveragingMode(mode) != AveragingMode.AUX:
            epoch = serializer.loads(user_data)
            epochs.append(epoch if isinstance(epoch, int) else repr(epoch))
    return epochs


@dataclass(frozen=True)
class AveragerKinds:
    """The averager classes a peer uses; the fault-injection bench substitutes attacker subclasses here."""

    gradient: type[GuardedGradientAverager] = GuardedGradientAverager
    state: type[GuardedStateAverager] = GuardedStateAverager
