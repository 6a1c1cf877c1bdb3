"""Where a peer's starting state comes from: peers first, then the coordinator's latest checkpoint, then step 0
(``starting_point``, ``resume_swarm_state``; after a growth switch, the stage's peers: ``resume_stage_state``). The
download from peers is ``peer.swarm.state``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import hivemind
import httpx

from peer.config import RunConfig
from peer.errors import UserError
from peer.logs import progress_on
from peer.modeling import PretrainingModels
from peer.run.checkpoint_manifest import MANIFEST
from peer.run.download import download
from peer.run.state_format import (
    SwarmState,
    apply_swarm_state,
    read_checkpoint_stage,
    read_checkpoint_state,
    wire_names,
)
from peer.swarm.checkpoint_source import checkpoint_source
from peer.swarm.state import Stoppable, peers_hold_state, pull_state_from_peers, waiting_bar
from peer.swarm.swarm_optimizer import SwarmOptimizer

logger = logging.getLogger(__name__)


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


def stage_checkpoint(coordinator_url: str | None, stage: int, work_dir: Path) -> StartingPoint | None:
    """The coordinator's latest checkpoint when it is one of growth ``stage`` (downloaded), else None: where a joiner
    after a switch starts when no peer of the stage shares its state (every peer left; the coordinator's checkpoints
    of a stage hold the stage's model). None without a coordinator, or when its latest is of another stage."""
    from peer.modeling import load_models

    if not coordinator_url:
        return None
    found = download_latest_checkpoint(coordinator_url, work_dir / "checkpoints")
    if found is None:
        return None
    path, step = found
    if read_checkpoint_stage(path) != stage:
        return None
    logger.info("starting from the coordinator's checkpoint %s (step %d) of growth stage %d", path.name, step, stage)
    return StartingPoint(load_models(path), path)


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
    prefix: str | None = None,
    stage: int = 0,
) -> None:
    """Puts the swarm's state into a freshly built optimizer: the starting checkpoint's step, optimizer state and
    outer momentum; then, if peers hold state, theirs (bounded by ``load_state_timeout``, stopped by ``stop``), part
    of it from the coordinator's latest checkpoint when that holds the same state (``checkpoint_source``). When
    no peer delivers and the models were only shapes, the coordinator's latest checkpoint (else step 0) instead.
    ``prefix``, ``stage``: the hivemind prefix and number of the growth stage the checkpoint is in (None, 0: the
    run_id, stage 0's)."""
    named = list(start.models.named_parameters())
    names = wire_names(opt, named)
    prefix = cfg.run_id if prefix is None else prefix
    if start.checkpoint_dir is not None:
        apply_swarm_state(opt, names, checkpoint_state(start.checkpoint_dir))
    if not peers_hold_state(dht, prefix, exclude=opt.opt.state_averager.peer_id.to_bytes()):
        return
    timeout = cfg.swarm.load_state_timeout
    with waiting_bar("state from peers", timeout):
        checkpoint = checkpoint_source(coordinator_url, stage, opt, named)
        pulled = pull_state_from_peers(opt, named, dht, prefix, timeout, stop, checkpoint)
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


def resume_stage_state(
    opt: SwarmOptimizer,
    models: PretrainingModels,
    dht: hivemind.DHT,
    prefix: str,
    timeout: float,
    stop: Stoppable,
    coordinator_url: str | None = None,
    stage: int = 0,
) -> None:
    """A joiner after the run's first switch: the stage's state from its peers (parameters, optimizer state, step),
    as ``resume_swarm_state`` downloads it (with the coordinator's checkpoint of growth ``stage`` as one more source);
    UserError in one line if none arrives within ``timeout``."""
    named = list(models.named_parameters())
    with waiting_bar("state from peers", timeout):
        checkpoint = checkpoint_source(coordinator_url, stage, opt, named)
        pulled = pull_state_from_peers(opt, named, dht, prefix, timeout, stop, checkpoint)
    if not pulled and not stop.is_set():
        raise UserError(f"no peer of this growth stage ({prefix}) sent its state within {timeout:.0f} s: try again")


def checkpoint_state(checkpoint_dir: Path) -> SwarmState:
    """A checkpoint's full state, its parameters read from disk again: the in-memory models may no longer hold them,
    because hivemind's optimizer initialisation (a zero-gradient step) applies weight decay to the parameters it
    optimizes, which are the model's own when the optimizer is not offloaded (DiLoCo)."""
    from peer.modeling import load_models

    return read_checkpoint_state(checkpoint_dir, list(load_models(checkpoint_dir).named_parameters()))
