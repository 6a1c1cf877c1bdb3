"""Where a peer's starting state comes from: peers first, then the coordinator's latest checkpoint, then step 0.

``pull_state_from_peers`` is a joining peer's download: bounded by ``SwarmSpec.load_state_timeout`` and stopped by
Ctrl-C. ``load_state_from_swarm`` is the coordinator's: the same hivemind state-download protocol, without joining
any averaging round. Both decode parameters, optimizer state, outer momentum and step (``peer.run.state_format``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import hivemind
import httpx
import torch
from hivemind.averaging import DecentralizedAverager
from tqdm import tqdm

from peer.config import RunConfig
from peer.errors import UserError
from peer.logs import progress_on
from peer.modeling import PretrainingModels
from peer.run.checkpoint_manifest import MANIFEST
from peer.run.download import download
from peer.run.state_format import (
    SwarmState,
    apply_swarm_state,
    check_shapes,
    decode_wire_state,
    read_checkpoint_state,
    wire_names,
)
from peer.swarm.modes import averaging_mode
from peer.swarm.overrides.state_download import StateDownloadClient
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
    """Downloads (metadata, tensors) from the best peer that answers; None when ``timeout`` seconds pass, when
    ``stop`` is set, or when an attempt finds nothing and ``keep_trying()`` says no peer is left to ask.

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
) -> bool:
    """A joining peer's download of the swarm's state (parameters, optimizer state, outer momentum, step) into
    ``opt``; False if no peer delivered it within ``timeout`` or ``stop`` was set. Applies the state as hivemind's
    ``Optimizer.load_state_from_peers`` does, including its catch-up to the swarm's epoch."""
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
) -> SwarmState | None:
    """Downloads the swarm's current state: its parameters are copied into ``models`` and referenced by the result,
    which also holds the optimizer state and outer momentum by parameter name. None if no peer answered within
    ``timeout`` or ``stop`` was set. Runs as a client-mode averager: it serves nothing and joins no round.

    The peers' optimizer is the run's recipe (``run_optimizer_factories``): it fixes both the wire order of the
    parameters and the layout of the optimizer state."""
    named = list(models.named_parameters())
    order, structure = optimizer_layout([p for _, p in named], cfg)
    names = [named[i][0] for i in order]
    averager = start_download_client(dht, cfg.run_id + STATE_AVERAGER_SUFFIX, min(timeout, CLIENT_START_TIMEOUT))
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


def download_latest_checkpoint(coordinator_url: str, out_dir: Path, timeout: float = 60.0) -> tuple[Path, int] | None:
    """Downloads the coordinator's newest checkpoint into ``out_dir/<name>``; returns (dir, step), or None if the
    coordinator has no checkpoint yet.

    The transfer itself is the coordinator's own client (resumable, sha256- and size-verified). It lands in a private
    temp dir that is renamed into place, so peers sharing ``out_dir`` never see or clobber each other's half files.
    """
    base = coordinator_url.rstrip("/")
    try:
        with httpx.Client(timeout=timeout, follow_redirects=True) as client:
            listing = client.get(f"{base}/api/v1/checkpoints")
            listing.raise_for_status()
            checkpoints = listing.json().get("checkpoints", [])
    except httpx.HTTPError as e:
        raise UserError(f"cannot list the coordinator's checkpoints at {base}: {e}") from None
    if not checkpoints:
        return None
    latest = checkpoints[-1]
    target = out_dir / latest["name"]
    if (target / MANIFEST).is_file():
        return target, int(latest["step"])
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{latest['name']}.", suffix=".tmp", dir=out_dir))
    try:
        result = download(base, tmp, checkpoint=latest["name"], timeout=timeout, progress=progress_on())
        try:
            tmp.rename(target)
        except OSError:  # another process sharing out_dir finished first: use its copy if complete
            if not (target / MANIFEST).is_file():
                raise
        return target, int(result.step)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class StartingPoint:
    """The models a peer starts with and where they came from: a checkpoint dir (whose step and optimizer state are
    resumed), or None when peers hold the state and the models only give shapes until the download."""

    models: PretrainingModels
    checkpoint_dir: Path | None


def fallback_checkpoint(cfg: RunConfig, coordinator_url: str | None, work_dir: Path) -> Path:
    """The coordinator's latest checkpoint when it has one, else the run's step-0 grown state, which every peer can
    rebuild bit for bit because growth is deterministic and seeded."""
    if coordinator_url:
        found = download_latest_checkpoint(coordinator_url, work_dir / "checkpoints")
        if found is not None:
            path, step = found
            logger.info("starting from the coordinator's checkpoint %s (step %d)", path.name, step)
            return path
    from peer.growth.artifact import grow_run_initial_state

    step0 = work_dir / f"{cfg.run_id}-step0"
    if not (step0 / "config.json").is_file():
        logger.info("no peer and no checkpoint: growing the run's step-0 state into %s", step0)
        grow_run_initial_state(cfg, step0)
    return step0


def starting_point(
    cfg: RunConfig, dht: hivemind.DHT, coordinator_url: str | None, init_dir: str | None, work_dir: Path, tokenizer
) -> StartingPoint:
    """Models to start from (before the download from peers, which overrides them)."""
    from peer.modeling import build_models, load_models

    if init_dir:
        return StartingPoint(load_models(init_dir), Path(init_dir))
    if peers_hold_state(dht, cfg.run_id):
        # shapes only: the state download that follows replaces every parameter
        models = build_models(cfg.model, len(tokenizer), tokenizer.pad_token_id or 0, seed=cfg.growth.seed)
        return StartingPoint(models, None)
    path = fallback_checkpoint(cfg, coordinator_url, work_dir)
    return StartingPoint(load_models(path), path)


def resume_swarm_state(
    opt: SwarmOptimizer,
    start: StartingPoint,
    cfg: RunConfig,
    dht: hivemind.DHT,
    stop: Stoppable,
    coordinator_url: str | None,
    work_dir: Path,
) -> None:
    """Puts the swarm's state into a freshly built optimizer: the starting checkpoint's step, optimizer state and
    outer momentum; then, if peers hold state, theirs (bounded by ``load_state_timeout``, stopped by ``stop``). When
    no peer delivers and the models were only shapes, the coordinator's latest checkpoint (else step 0) instead."""
    named = list(start.models.named_parameters())
    names = wire_names(opt, named)
    if start.checkpoint_dir is not None:
        apply_swarm_state(opt, names, checkpoint_state(start.checkpoint_dir))
    if not peers_hold_state(dht, cfg.run_id, exclude=opt.opt.state_averager.peer_id.to_bytes()):
        return
    timeout = cfg.swarm.load_state_timeout
    with waiting_bar("state from peers", timeout):
        pulled = pull_state_from_peers(opt, named, dht, cfg.run_id, timeout, stop)
    if pulled or stop.is_set():
        return
    if start.checkpoint_dir is not None:
        logger.warning("no peer sent its state within %.0f s: continuing from %s", timeout, start.checkpoint_dir.name)
        return
    logger.warning(
        "no peer sent its state within %.0f s: starting from the coordinator's latest checkpoint (else step 0)",
        timeout,
    )
    apply_swarm_state(opt, names, checkpoint_state(fallback_checkpoint(cfg, coordinator_url, work_dir)))


def wait_for_stage_state(dht: hivemind.DHT, prefix: str, stage: int, timeout: float, stop: Stoppable) -> None:
    """Waits until a peer of growth stage ``stage`` (hivemind prefix ``prefix``) declares state to share; UserError in
    one line if none does within ``timeout`` s. Why wait: a joiner that read a step past the switch may arrive while
    the peers are still growing; and why fail rather than fall back: the coordinator's checkpoints and step 0 hold
    the first stage's model (a stage-aware checkpoint is the coordinator's part of mid-run growth)."""
    deadline = time.monotonic() + timeout
    while not peers_hold_state(dht, prefix):
        if _stopped(stop, 1.0):
            return
        if time.monotonic() >= deadline:
            raise UserError(
                f"the swarm is in growth stage {stage}, and no peer of that stage shared its state within "
                f"{timeout:.0f} s: try again later"
            )


def resume_stage_state(
    opt: SwarmOptimizer, models: PretrainingModels, dht: hivemind.DHT, prefix: str, timeout: float, stop: Stoppable
) -> None:
    """A joiner after the run's first switch: the stage's state from its peers (parameters, optimizer state, step),
    as ``resume_swarm_state`` downloads it; UserError in one line if none arrives within ``timeout``."""
    with waiting_bar("state from peers", timeout):
        pulled = pull_state_from_peers(opt, list(models.named_parameters()), dht, prefix, timeout, stop)
    if not pulled and not stop.is_set():
        raise UserError(f"no peer of this growth stage ({prefix}) sent its state within {timeout:.0f} s: try again")


def checkpoint_state(checkpoint_dir: Path) -> SwarmState:
    """A checkpoint's full state, its parameters read from disk again: the in-memory models may no longer hold them,
    because hivemind's optimizer initialisation (a zero-gradient step) applies weight decay to the parameters it
    optimizes, which are the model's own when the optimizer is not offloaded (DiLoCo)."""
    from peer.modeling import load_models

    return read_checkpoint_state(checkpoint_dir, list(load_models(checkpoint_dir).named_parameters()))
