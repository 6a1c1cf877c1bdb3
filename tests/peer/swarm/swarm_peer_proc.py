"""A real swarm peer in its own process for the multi-process tests: real DHT + p2pd, real hivemind.Optimizer,
the real ``train_loop``, on a tiny linear-regression model so that a round takes seconds on 2 shared cores.

Usage: python swarm_peer_proc.py OUT_DIR MODE [INITIAL_PEER ...]; env: STEPS, TARGET, COMPRESSION, PEER_SEED,
LOAD_STATE (1 = download state from peers first), EXTRA_STEPS, MIN_PEERS (wait for them), STEP_SLEEP (extra
"compute" per batch), MATCHMAKING, VERBOSE, LINGER (seconds to stay after the last step), OVERLAP (1 = diloco
rounds in the background; the last one is finished before the result is written), MOMENTUM_COMPRESSION (diloco's
outer momentum codec, default minmax8bit as in SwarmSpec), MOMENTUM_SYNC (average, catch_up; default: SwarmSpec's),
MISS_ROUND (overlap: this peer gives up its background round of that epoch at once, as over a dropped link),
PROGRESS_REFRESH (swarm.progress_refresh_max, default 1 s), LOSS (``sum``: the loss is the sum of the parameters,
so every gradient is 1 whatever the data and the parameters, and SGD moves each parameter by exactly -lr per
optimizer step that took effect, and so does Adam: its bias-corrected moments of a constant gradient are 1), OPT
(``adam``; default SGD, both at lr 0.05), EXTRA_PARAMS (one more parameter of that many zeros, to make rounds long),
DELAY_STEP (1 = sync mode's ``delay_optimizer_step``: the global step runs in the background), CHUNK_TIMEOUT
(``swarm.chunk_timeout``; default: MATCHMAKING; 0.002 makes every all-reduce leave parts out).
Writes OUT_DIR/maddrs.json once the DHT is up, OUT_DIR/result.pt (parameters, steps, diloco anchor) at the end.
"""

import itertools
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

from peer.config import PeerSettings, SwarmSpec
from peer.swarm.averaging import build_swarm_optimizer
from peer.swarm.dht import start_dht, visible_maddrs
from peer.swarm.loop import LoopOptions, LoopParts, train_loop
from peer.swarm.metrics import make_validators
from peer.swarm.shutdown import StopSignal

RUN_ID = "swarmtest"


def main() -> int:
    out, mode, initial = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    steps = int(os.environ.get("STEPS", "3"))
    spec = SwarmSpec(
        target_batch_size=int(os.environ.get("TARGET", "64")),
        averaging=mode,
        inner_steps=1,
        outer_lr=float(os.environ.get("OUTER_LR", "0.7")),
        compression=os.environ.get("COMPRESSION", "none"),
        momentum_compression=os.environ.get("MOMENTUM_COMPRESSION", "minmax8bit"),
        matchmaking_time=float(os.environ.get("MATCHMAKING", "4")),
        averaging_timeout=30.0,
        chunk_timeout=float(os.environ["CHUNK_TIMEOUT"]) if os.environ.get("CHUNK_TIMEOUT") else None,
        load_state_timeout=30.0,
        overlap_rounds=os.environ.get("OVERLAP") == "1",
        delay_optimizer_step=os.environ.get("DELAY_STEP") == "1",
        momentum_sync=os.environ.get("MOMENTUM_SYNC") or None,
        # a global step here takes 2-3 s: with hivemind's 3-10 s between progress reads, a peer that started a moment
        # before it saw the other's first record took all its global steps alone (CI, 2026-12-03: 0.06 and 0.14 apart)
        progress_refresh_max=float(os.environ.get("PROGRESS_REFRESH", "1")),
    )
    stop = StopSignal().install()
    signing = make_validators(RUN_ID)
    dht = start_dht(PeerSettings(initial_peers=initial, host_maddrs=["/ip4/127.0.0.1/tcp/0"]), signing.validators)
    (out / "maddrs.json").write_text(json.dumps(visible_maddrs(dht)))
    torch.manual_seed(0)  # same initial model on every peer, as after a download of step 0
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    params = list(model.parameters())
    if int(os.environ.get("EXTRA_PARAMS", "0")):  # a round of this size takes long enough to outlast an epoch
        params.append(torch.nn.Parameter(torch.zeros(int(os.environ["EXTRA_PARAMS"]))))
    start_params = [p.detach().clone() for p in params]
    adam = os.environ.get("OPT") == "adam"
    opt = build_swarm_optimizer(
        dht,
        RUN_ID,
        spec,
        params,
        (lambda p: torch.optim.Adam(p, lr=0.05)) if adam else (lambda p: torch.optim.SGD(p, lr=0.05)),
        None,
        batch_size=8,
        verbose=os.environ.get("VERBOSE") == "1",
    )
    if os.environ.get("MISS_ROUND") and opt.background is not None:
        miss_round(opt.background, int(os.environ["MISS_ROUND"]))
    if os.environ.get("LOAD_STATE") == "1":
        opt.load_state_from_peers()
        (out / "loaded.json").write_text(json.dumps({"step": opt.global_step}))
    if os.environ.get("EXTRA_STEPS"):
        steps = opt.global_step + int(os.environ["EXTRA_STEPS"])  # take part in this many more rounds
    # start together (the loop waits until the others are in its progress tracker), so every peer contributes to
    # every round
    min_peers = int(os.environ.get("MIN_PEERS", "1"))
    gen = torch.Generator().manual_seed(int(os.environ.get("PEER_SEED", "1")))
    w_true = torch.randn(16, 1, generator=torch.Generator().manual_seed(42))
    sleep = float(os.environ.get("STEP_SLEEP", "0.05"))

    def batches():
        for _ in itertools.count():
            x = torch.randn(8, 16, generator=gen)
            yield {"x": x, "y": x @ w_true}

    def loss_fn(batch):
        time.sleep(sleep)
        if os.environ.get("LOSS") == "sum":
            return sum(p.sum() for p in params)
        return torch.nn.functional.mse_loss(model(batch["x"]), batch["y"])

    parts = LoopParts(params=params, objective=loss_fn, batches=batches())
    try:
        result = train_loop(
            dht,
            RUN_ID,
            signing,
            opt,
            parts,
            stop,
            LoopOptions(max_global_steps=steps, metrics_every=1.0, show_status=False, wait_for_peers=min_peers),
        )
        opt.finish_round(timeout=60.0)
        if spec.delay_optimizer_step:  # the last global step ran in the background: apply it, as shutdown would
            opt.opt.state_averager.step(wait_for_delayed_updates=True)
        background = opt.background
        torch.save(
            {
                "params": [p.detach().clone() for p in params],
                "initial": start_params,
                "anchor": [a.clone() for a in opt.outer.anchor] if opt.outer is not None else None,
                "momentum": [m.clone() for m in opt.outer.momentum] if opt.outer is not None else None,
                "rounds_averaged": background.rounds_averaged if background is not None else None,
                # error feedback's residuals (compression: blockwise4bit), else None
                "residual": background.feedback.residual if background and background.feedback else None,
                "catch_ups": opt.catch_ups,
                "step": result.global_step,
                "optimizer_steps": opt.opt.state_averager.optimizer_steps,
                "samples": result.samples,
            },
            out / "result.pt",
        )
        # stay in the swarm a little so slower peers can finish their last round with us
        stop.wait(float(os.environ.get("LINGER", "5")))
    finally:
        opt.shutdown()
        dht.shutdown()
    return 0


def miss_round(background, epoch: int) -> None:
    """The fault the catch-up rule is for: this peer gives up its round of ``epoch`` right after starting it (as
    when its link drops) while the others average; every other round runs as usual."""
    start = background.start

    def start_or_miss(round_epoch: int) -> None:
        start(round_epoch)
        if round_epoch == epoch:
            background.control.cancel()

    background.start = start_or_miss


if __name__ == "__main__":
    sys.exit(main())
