"""The peer's state averager (``GuardedStateAverager``): hivemind's ``TrainingStateAverager`` behind the guard
(``peer.swarm.overrides.guard``), with checked state downloads (``RoundCheckedDownload``), background rounds that
can be called off (``CancellableRounds``) and extra tensors that may be shared instead of averaged.

Replaces (hivemind 1.1.12): see each class. Plugged in through an Optimizer subclass overriding
``_make_state_averager`` (``peer.swarm.overrides.optimizer``); it averages the parameters (diloco's averaging, sync
mode's periodic state averaging).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import hivemind
import torch
from hivemind.averaging.allreduce import AveragingMode
from hivemind.averaging.control import AveragingStage, StepControl
from hivemind.averaging.group_info import GroupInfo
from hivemind.optim.state_averager import TrainingStateAverager

from peer.run.state_format import LANDED_ROUND
from peer.swarm.host_buffers import CopyFence, pin_shared, pinned_copy
from peer.swarm.overrides.guard import GuardedAveragerMixin
from peer.swarm.overrides.state_parts import StatePartsDownload
from peer.swarm.round_evidence import STATE
from peer.swarm.state_check import state_problem

logger = logging.getLogger(__name__)


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


class GuardedStateAverager(
    GuardedAveragerMixin, TrainingStateAverager, RoundCheckedDownload, CancellableRounds, StatePartsDownload
):
    """The state averager; with ``average_extras=False`` its ``extra_tensors`` are shared, not averaged.

    Why the option: DiLoCo's outer Nesterov momentum is an extra tensor so that a late joiner downloads it with the
    parameters; every peer of a round applies the same averaged pseudo-gradient, so averaging the buffers costs a
    third of what a round sends (8 bits next to fp16 parameters) while changing nothing — as long as no peer misses
    a round. One that does keeps a different momentum, and its next outer steps differ (measured: two test peers
    0.18-0.49 apart after the last round), so without averaging a peer that missed one downloads a state that
    includes it (``momentum_sync: catch_up``; ``landed_round`` is served for that). The wire format of a state
    download is the same either way (parameters, extras, optimizer state)."""

    outcome_kind = STATE
    # hivemind caches a servicer's RPC handlers and stub per class, looked up through the MRO: without our own cache
    # a TrainingStateAverager used earlier in the process would lend us its list, without rpc_download_state_part
    _rpc_handlers = None
    _stub_type = None
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
