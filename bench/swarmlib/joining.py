"""The two sides of ``bench/joiners.py``, each one peer inside its namespace: a donor (a peer of the swarm holding
the state at epoch ``DONOR_EPOCH``, serving it until told to stop) and a joiner (starts as ``peer join`` does,
downloads the swarm's state with ``peer.swarm.state.pull_state_from_peers``, and stops there: the moment it could
train). Files in the phase's directory pace them: ``go`` (every joiner is up: download now) and ``done``.

torch and hivemind are imported inside the functions, so ``bench/joiners.py --help`` starts without them."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.swarmlib.netem import SUBNET
from bench.swarmlib.worker import rx_bytes, tx_bytes

DONOR_EPOCH = 5  # the donors' step: above a fresh joiner's own declaration (0), so joiners never ask each other


def wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path.name} never appeared")
        time.sleep(0.1)


def newest_donors(dht, run_id: str) -> int:
    found = dht.get(f"{run_id}_state_averager.all_averagers", latest=True)
    entries = found.value.values() if found is not None and isinstance(found.value, dict) else ()
    return sum(getattr(entry, "value", None) == DONOR_EPOCH for entry in entries)


def joining_peer(opts: argparse.Namespace):
    """DHT, model and swarm optimizer of one peer: ``--layers`` MLP blocks of width ``--hidden`` with AdamW, so the
    state moves what a real peer's does (parameters and two moments, 3x the parameters, in a few dozen tensors: the
    split download cuts between tensors), in sync mode."""
    import torch

    from peer.config import PeerSettings, SwarmSpec
    from peer.swarm.averaging import build_swarm_optimizer
    from peer.swarm.dht import start_dht
    from peer.swarm.metrics import make_validators
    from peer.swarm.overrides.averagers import AveragerKinds
    from peer.swarm.overrides.state_averager import GuardedStateAverager
    from peer.swarm.overrides.state_parts import SplitDownload

    class WholeDownload(GuardedStateAverager):
        """hivemind's own download (whole state, donors by priority): the baseline."""

        split_download = SplitDownload(enabled=False)

    torch.set_num_threads(1)
    peer = PeerSettings(initial_peers=opts.initial, host_maddrs=[f"/ip4/{SUBNET}.{opts.index + 1}/tcp/0"])
    spec = SwarmSpec(target_batch_size=1 << 20, averaging="sync", load_state_timeout=600.0)
    dht = start_dht(peer, make_validators(opts.run_id).validators)
    torch.manual_seed(0)
    h = opts.hidden
    blocks = [[torch.nn.Linear(h, 4 * h), torch.nn.GELU(), torch.nn.Linear(4 * h, h)] for _ in range(opts.layers)]
    model = torch.nn.Sequential(*(module for block in blocks for module in block))
    kinds = AveragerKinds(state=WholeDownload) if opts.method == "whole" else None
    opt = build_swarm_optimizer(
        dht, opts.run_id, spec, list(model.parameters()), lambda p: torch.optim.AdamW(p, lr=1e-3), None,
        batch_size=1, kinds=kinds,
    )  # fmt: skip
    return dht, model, opt


def donor(opts: argparse.Namespace) -> None:
    """Holds the state at ``DONOR_EPOCH`` until ``done``; writes the bytes its link sent from ``go`` to ``done``."""
    from peer.swarm.dht import visible_maddrs

    out = Path(opts.out)
    dht, _, opt = joining_peer(opts)
    try:
        averager = opt.opt.state_averager
        averager.local_epoch = DONOR_EPOCH  # what it serves as its step; and declared as its priority
        averager.state_sharing_priority = DONOR_EPOCH
        (out / f"maddrs{opts.index}.json").write_text(json.dumps({"maddrs": visible_maddrs(dht)}))
        wait_for(out / "go", 900)
        tx0 = tx_bytes()
        wait_for(out / "done", 900)
        result = dict(role="donor", peer_id=averager.peer_id.to_base58(), tx_bytes=tx_bytes() - tx0)
        (out / f"result{opts.index}.json").write_text(json.dumps(result))
    finally:
        opt.shutdown()
        dht.shutdown()


def joiner(opts: argparse.Namespace) -> None:
    """Starts (``launched``: when the orchestrator started its process), waits until it sees every donor and for
    ``go``, downloads the state; writes its start-up, download and launch-to-trainable seconds."""
    from peer.swarm.shutdown import StopSignal
    from peer.swarm.state import pull_state_from_peers

    out = Path(opts.out)
    dht, model, opt = joining_peer(opts)
    try:
        deadline = time.monotonic() + 120
        while newest_donors(dht, opts.run_id) < opts.donors:
            if time.monotonic() > deadline:
                raise RuntimeError(f"fewer than {opts.donors} donors declared their state")
            time.sleep(0.2)
        up = time.time()
        (out / f"ready{opts.index}").write_text("1")
        wait_for(out / "go", 900)
        rx0, t0 = rx_bytes(), time.time()
        if not pull_state_from_peers(opt, list(model.named_parameters()), dht, opts.run_id, 600.0, StopSignal()):
            raise RuntimeError("the state download failed")
        t1 = time.time()
        assert opt.global_step == DONOR_EPOCH, opt.global_step
        result = dict(role="joiner", startup_s=up - opts.launched, download_s=t1 - t0,
                      rx_bytes=rx_bytes() - rx0, go=t0, loaded=t1)  # fmt: skip
        (out / f"result{opts.index}.json").write_text(json.dumps(result))
    finally:
        opt.shutdown()
        dht.shutdown()
