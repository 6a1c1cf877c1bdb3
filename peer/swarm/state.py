"""Where a peer's starting state comes from: peers first, then the coordinator's latest checkpoint, then step 0.

Also ``load_state_from_swarm`` for the coordinator: it downloads the current averaged parameters with hivemind's
state-averager protocol (the same one late-joining peers use) without joining any averaging round.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import hivemind
import httpx
import torch
from hivemind.averaging import DecentralizedAverager
from tqdm import tqdm

from peer.config import RunConfig
from peer.errors import UserError
from peer.modeling import PretrainingModels

logger = logging.getLogger(__name__)

STATE_AVERAGER_SUFFIX = "_state_averager"  # hivemind.Optimizer's prefix for its TrainingStateAverager


@contextmanager
def waiting_bar(description: str, timeout: float | None) -> Iterator[None]:
    """An elapsed-time bar while a blocking download runs: hivemind streams the state in one call and does not
    report bytes, so the bar shows time against the timeout, which is what a waiting volunteer needs to know."""
    done = threading.Event()
    bar = tqdm(total=round(timeout) if timeout else None, desc=description, unit="s", leave=False)

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


class _StateDownloadClient(DecentralizedAverager):
    """Client side of hivemind.Optimizer's state download. hivemind names RPC handlers after the servicer's class
    (``<prefix>::TrainingStateAverager.rpc_download_state``), so the client must carry that class name; its own
    handler cache keeps it from reusing a parent's stub built under another name."""

    _rpc_handlers = None
    _stub_type = None


_StateDownloadClient.__name__ = "TrainingStateAverager"


def parameter_order(params: Sequence[torch.Tensor], optimizer_factory: Callable) -> list[int]:
    """Indices of ``params`` in the order the optimizer's param groups list them, which is the order the state
    averager sends them in (an optimizer may regroup parameters, e.g. decay / no-decay)."""
    opt = optimizer_factory(list(params))
    index = {id(p): i for i, p in enumerate(params)}
    return [index[id(p)] for group in opt.param_groups for p in group["params"]]


def load_state_from_swarm(
    dht: hivemind.DHT,
    cfg: RunConfig,
    models: PretrainingModels,
    timeout: float,
    optimizer_factory: Callable | None = None,
) -> int | None:
    """Downloads the swarm's current parameters into ``models``; returns their global step, None if no peer
    answered within ``timeout``. Runs as a client-mode averager: it serves nothing and joins no round.

    ``optimizer_factory`` must be the one the peers use (default: ``peer.trainer.make_optimizer`` with
    ``cfg.train``), because the wire order of parameters is the optimizer's."""
    if optimizer_factory is None:
        from peer.trainer import make_optimizer

        def optimizer_factory(params):
            return make_optimizer(params, cfg.train)

    params = models.parameters()
    averager = _StateDownloadClient(
        averaged_tensors=[torch.zeros(1)],
        dht=dht,
        prefix=cfg.run_id + STATE_AVERAGER_SUFFIX,
        client_mode=True,
        start=True,
    )
    try:
        deadline = time.monotonic() + timeout
        loaded = None
        while loaded is None and time.monotonic() < deadline:
            loaded = averager.load_state_from_peers(timeout=max(1.0, deadline - time.monotonic()))
            if loaded is None:
                time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
    finally:
        averager.shutdown()
    if loaded is None:
        return None
    metadata, tensors = loaded
    order = parameter_order(params, optimizer_factory)
    if len(tensors) < len(order):
        raise UserError(f"swarm state has {len(tensors)} tensors, expected at least {len(order)}: model mismatch")
    with torch.no_grad():
        for position, index in enumerate(order):
            target, loaded_tensor = params[index], tensors[position]
            if target.shape != loaded_tensor.shape:
                raise UserError(
                    f"swarm state tensor {position} has shape {tuple(loaded_tensor.shape)}, expected "
                    f"{tuple(target.shape)}: this config's model does not match the swarm's"
                )
            target.copy_(loaded_tensor.to(target.dtype))
    return int(metadata["epoch"])


def download_latest_checkpoint(coordinator_url: str, out_dir: Path, timeout: float = 60.0) -> tuple[Path, int] | None:
    """Downloads the coordinator's newest checkpoint into ``out_dir/<name>``; returns (dir, step), or None if the
    coordinator has no checkpoint yet.

    The transfer itself is the coordinator's own client (resumable, sha256- and size-verified). It lands in a private
    temp dir that is renamed into place, so peers sharing ``out_dir`` never see or clobber each other's half files.
    """
    from coordinator.download import download

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
    if (target / "manifest.json").is_file():
        return target, int(latest["step"])
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{latest['name']}.", suffix=".tmp", dir=out_dir))
    try:
        result = download(base, tmp, checkpoint=latest["name"], timeout=timeout)
        try:
            tmp.rename(target)
        except OSError:  # another process sharing out_dir finished first: use its copy if complete
            if not (target / "manifest.json").is_file():
                raise
        return target, int(result.step)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_checkpoint_step(checkpoint_dir: Path) -> int:
    state = checkpoint_dir / "training_state.json"
    return int(json.loads(state.read_text())["step"]) if state.is_file() else 0
