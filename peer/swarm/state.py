"""The swarm's state downloaded from its peers (where a peer's starting state comes from as a whole, peers first, then
a checkpoint, then step 0: ``peer.swarm.starting_state``).

``pull_state_from_peers`` is a joining peer's download: bounded by ``SwarmSpec.load_state_timeout`` and stopped by
Ctrl-C. ``load_state_from_swarm`` is the coordinator's: the same hivemind state-download protocol, without joining
any averaging round. Both decode parameters, optimizer state, outer momentum and step (``peer.run.state_format``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import hivemind
import torch
from hivemind.averaging import DecentralizedAverager
from tqdm import tqdm

from peer.config import RunConfig
from peer.errors import UserError
from peer.logs import progress_on
from peer.modeling import PretrainingModels
from peer.run.state_format import (
    SwarmState,
    apply_swarm_state,
    check_shapes,
    decode_wire_state,
    wire_names,
)
from peer.swarm.checkpoint_source import CheckpointSource
from peer.swarm.modes import averaging_mode
from peer.swarm.overrides.state_download import StateDownloadClient
from peer.swarm.overrides.state_parts import StatePartsDownload
from peer.swarm.shutdown import signal_handlers_kept
from peer.swarm.state_check import missing_tensors, state_problem
from peer.swarm.swarm_optimizer import SwarmOptimizer
from peer.trainer.recipe import optimizer_layout

logger = logging.getLogger(__name__)

STATE_AVERAGER_SUFFIX = "_state_averager"  # hivemind.Optimizer's prefix for its TrainingStateAverager
POLL_SECONDS = 0.25  # how often a download checks its deadline and the stop signal
RETRY_PAUSE = 2.0  # seconds between download attempts while peers are still listed


@contextmanager
def waiting_bar(description: str, timeout: float | None) -> Iterator[None]:
    """An elapsed-time bar while a blocking download runs: hivemind streams the state in one call and does not
    report bytes, so the bar shows time against the timeout, which is what a waiting volunteer needs to know."""
    done = threading.Event()
    bar = tqdm(
        total=round(timeout) if timeout else None, desc=description, unit="s", leave=False, disable=not progress_on()
    )

    def tick() -> None:
        while not done.wait(1.0):
            bar.update(1)

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        bar.close()


def parameter_order(params: Sequence[torch.Tensor], optimizer_factory: Callable) -> list[int]:
    """Indices of ``params`` in the order the optimizer's param groups list them, which is the order the state
    averager sends them in (an optimizer may regroup parameters, e.g. decay / no-decay)."""
    opt = optimizer_factory(list(params))
    index = {id(p): i for i, p in enumerate(params)}
    return [index[id(p)] for group in opt.param_groups for p in group["params"]]


class Stoppable(Protocol):
    """What a download polls to give up early: ``StopSignal`` (peers) or ``threading.Event`` (the coordinator)."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float) -> bool: ...


def peers_hold_state(dht: hivemind.DHT, run_id: str, exclude: bytes | None = None) -> bool:
    """Whether any peer of the run currently declares state to share (hivemind's ``all_averagers`` record, whose
    subkeys are peer ids); ``exclude`` is the asking peer's own id (its averager declares itself too)."""
    found = dht.get(f"{run_id}{STATE_AVERAGER_SUFFIX}.all_averagers", latest=True)
    if found is None or not isinstance(found.value, dict):
        return False
    return any(
        subkey != exclude and isinstance(getattr(entry, "value", None), int | float)  # None: sharing switched off
        for subkey, entry in found.value.items()
    )


def fetch_state(
    averager: DecentralizedAverager,
    timeout: float,
    stop: Stoppable | None = None,
    keep_trying: Callable[[], bool] | None = None,
) -> tuple[dict, list[torch.Tensor]] | None:
    """Downloads (metadata, tensors): in tensor ranges from the donors of the newest state, else whole from the best
    peer that answers (the averager's download, ``peer.swarm.overrides.state_parts``); None when ``timeout``
    seconds pass, when ``stop`` is set, or when an attempt finds nothing and ``keep_trying()`` says no peer is left
    to ask.

    Why not hivemind's ``Optimizer.load_state_from_peers``: it retries without bound (a download that outlasts
    ``load_state_timeout`` raises, is logged and starts over, forever), and it blocks the main thread in a call
    that Ctrl-C cannot reach (hivemind set SIGINT to ignored when it started the averager; even our handler only
    sets a flag). Here the averager's own download runs in its process and this thread polls the future, the
    deadline and ``stop``."""
    deadline = time.monotonic() + timeout
    while not _stopped(stop):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        # the base class's call returns hivemind's raw future; TrainingStateAverager's override would block
        future = DecentralizedAverager.load_state_from_peers(averager, wait=False, timeout=remaining)
        while not future.done():
            if _stopped(stop, POLL_SECONDS) or time.monotonic() >= deadline:
                future.cancel()
                return None
        try:
            loaded = future.result()
        except Exception as e:  # the download's own failures are retried within the deadline
            logger.warning("state download failed: %s", e)
            loaded = None
        if loaded is not None:
            return loaded
        if keep_trying is not None and not keep_trying():
            return None
        _stopped(stop, min(RETRY_PAUSE, max(0.0, deadline - time.monotonic())))
    return None


def _stopped(stop: Stoppable | None, wait: float = 0.0) -> bool:
    if stop is None:
        time.sleep(wait)
        return False
    return stop.wait(wait) if wait > 0 else stop.is_set()


def pull_state_from_peers(
    opt: SwarmOptimizer,
    named_parameters: Sequence[tuple[str, torch.Tensor]],
    dht: hivemind.DHT,
    run_id: str,
    timeout: float,
    stop: Stoppable | None = None,
    checkpoint: CheckpointSource | None = None,
) -> bool:
    """A joining peer's download of the swarm's state (parameters, optimizer state, outer momentum, step) into
    ``opt``; False if no peer delivered it within ``timeout`` or ``stop`` was set. Applies the state as hivemind's
    ``Optimizer.load_state_from_peers`` does, including its catch-up to the swarm's epoch. ``checkpoint``: the
    coordinator's, one more source of the split download when it holds the donors' state
    (``peer.swarm.checkpoint_source``), for this download only."""
    averager = opt.opt.state_averager
    if checkpoint is None or not isinstance(averager, StatePartsDownload):
        return _pull_state(opt, named_parameters, dht, run_id, timeout, stop)
    averager.use_checkpoint_source(checkpoint)
    try:
        return _pull_state(opt, named_parameters, dht, run_id, timeout, stop)
    finally:
        averager.use_checkpoint_source(None)


def _pull_state(
    opt: SwarmOptimizer,
    named_parameters: Sequence[tuple[str, torch.Tensor]],
    dht: hivemind.DHT,
    run_id: str,
    timeout: float,
    stop: Stoppable | None,
) -> bool:
    hopt = opt.opt
    averager = hopt.state_averager
    logger.info("downloading the swarm's state from peers (at most %.0f s; Ctrl-C stops)", timeout)
    deadline = time.monotonic() + timeout
    with hopt.tracker.pause_updates():
        me = averager.peer_id.to_bytes()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or _stopped(stop):
                return False
            loaded = fetch_state(
                averager, remaining, stop, keep_trying=lambda: peers_hold_state(dht, run_id, exclude=me)
            )
            if loaded is None:
                return False
            metadata, tensors = loaded
            short = missing_tensors(metadata, tensors, len(averager.main_parameters) + len(averager.extra_tensors))
            if short == 0:
                break
            logger.warning("the state download ended %d tensors short: asking again", short)
            _stopped(stop, min(RETRY_PAUSE, max(0.0, deadline - time.monotonic())))
        problem = state_problem(tensors)
        if problem is not None:
            logger.warning("not loading the swarm's state: %s", problem)
            return False
        names = wire_names(opt, named_parameters)
        structure = averager.optimizer.state_dict()
        state = decode_wire_state(metadata, tensors, names, structure, len(averager.extra_tensors))
        if state.step < opt.global_step:
            logger.warning(
                "the peer's state is at step %d, behind ours (%d): not loading it", state.step, opt.global_step
            )
            return False
        apply_swarm_state(opt, names, state)
        if hopt.tracker.global_epoch - 1 <= hopt.local_epoch < hopt.tracker.global_epoch:
            averager.local_epoch = hopt.tracker.global_epoch
        hopt.tracker.report_local_progress(local_epoch=hopt.local_epoch, samples_accumulated=0)
        if hopt.grad_averager is not None:
            hopt.grad_averager.reset_accumulated_grads_()
            if not hopt.client_mode:
                hopt.grad_averager.state_sharing_priority = hopt.local_epoch
    logger.info(
        "loaded the swarm's state at global step %d (optimizer state for %d tensors)", state.step, len(state.optimizer)
    )
    return True


CLIENT_START_TIMEOUT = 120.0  # seconds a state download client may take to start before the pull is abandoned


def start_download_client(dht: hivemind.DHT, prefix: str, timeout: float) -> StateDownloadClient | None:
    """A started client-mode averager for one state download, or None (logged) if its process is not ready within
    ``timeout`` seconds; such a process is killed, so the caller simply retries later.

    Why bounded: hivemind's own start waits for the forked averager without a limit, and the coordinator forks it
    from a process busy with HTTP, gRPC and monitor threads. A start that never completes would stop every later
    checkpoint without a word in the log (CI, 2026-12-07: a coordinator wrote no checkpoint in 900 s)."""
    averager = StateDownloadClient(
        averaged_tensors=[torch.zeros(1)], dht=dht, prefix=prefix, client_mode=True, start=False
    )
    with signal_handlers_kept():  # hivemind sets SIGINT to ignored while it starts the averager
        try:
            averager.run_in_background(await_ready=True, timeout=timeout)
            return averager
        except TimeoutError:
            logger.warning("the state download client did not start within %.0f s; killed it, will retry", timeout)
        except Exception as e:  # its start failed in the child (e.g. the DHT's daemon went away): retried later
            logger.warning("the state download client failed to start: %s; will retry", e)
    if averager.is_alive():
        averager.kill()
        averager.join(5.0)
    return None


def load_state_from_swarm(
    dht: hivemind.DHT,
    cfg: RunConfig,
    models: PretrainingModels,
    timeout: float,
    stop: Stoppable | None = None,
    prefix: str | None = None,
) -> SwarmState | None:
    """Downloads the swarm's current state: its parameters are copied into ``models`` and referenced by the result,
    which also holds the optimizer state and outer momentum by parameter name. None if no peer answered within
    ``timeout`` or ``stop`` was set. Runs as a client-mode averager: it serves nothing and joins no round.
    ``prefix``: the hivemind prefix of the growth stage whose state it is (``peer.swarm.stage_keys``; None: the
    run_id, stage 0's); ``models`` must have that stage's shapes.

    The peers' optimizer is the run's recipe (``run_optimizer_factories``): it fixes both the wire order of the
    parameters and the layout of the optimizer state."""
    named = list(models.named_parameters())
    order, structure = optimizer_layout([p for _, p in named], cfg)
    names = [named[i][0] for i in order]
    prefix = cfg.run_id if prefix is None else prefix
    averager = start_download_client(dht, prefix + STATE_AVERAGER_SUFFIX, min(timeout, CLIENT_START_TIMEOUT))
    if averager is None:
        return None
    try:
        loaded = fetch_state(averager, timeout, stop)
    finally:
        averager.shutdown()
    if loaded is None:
        return None
    metadata, tensors = loaded
    problem = state_problem(tensors)
    if problem is not None:  # e.g. the coordinator's checkpoint pull: such a state must never become a checkpoint
        logger.warning("not using the swarm's state: %s", problem)
        return None
    num_extras = averaging_mode(cfg.swarm).extras_per_parameter * len(names)
    state = decode_wire_state(metadata, tensors, names, structure, num_extras)
    check_shapes(state, {name: p.shape for name, p in named})
    with torch.no_grad():
        for name, param in named:
            param.copy_(state.parameters[name].to(param.dtype))
    state.parameters = dict(named)
    return state


def wait_for_stage_state(dht: hivemind.DHT, prefix: str, stage: int, timeout: float, stop: Stoppable) -> None:
    """Waits until a peer of growth stage ``stage`` (hivemind prefix ``prefix``) declares state to share; UserError in
    one line if none does within ``timeout`` s. Why wait: a joiner that read a step past the switch may arrive while
    the peers are still growing; and why fail rather than fall back: step 0 holds the first stage's model, and the
    session asked the coordinator for a checkpoint of the stage before it waits here."""
    deadline = time.monotonic() + timeout
    while not peers_hold_state(dht, prefix):
        if _stopped(stop, 1.0):
            return
        if time.monotonic() >= deadline:
            raise UserError(
                f"the swarm is in growth stage {stage}, and no peer of that stage shared its state within "
                f"{timeout:.0f} s: try again later"
            )
