"""One peer inside its namespace: the real swarm stack (DHT, hivemind.Optimizer, ``train_loop``) on an MLP, or
the two sides of the state download; writes its figures to ``result<i>.json``. torch and hivemind are imported here,
in the worker, only."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.swarmlib.netem import SUBNET


def state_sources(dht, run_id: str) -> int:
    found = dht.get(f"{run_id}_state_averager.all_averagers", latest=True)
    return len(found.value) if found is not None and isinstance(found.value, dict) else 0


def tx_bytes() -> int:
    return int(Path("/sys/class/net/eth0/statistics/tx_bytes").read_text())


def rx_bytes() -> int:
    return int(Path("/sys/class/net/eth0/statistics/rx_bytes").read_text())


class RoundBytes:
    """The peer's SwarmOptimizer, counting what ``eth0`` sent during the steps that ended in a global step (the
    averaging rounds: gradients in "sync", parameters in "diloco"; both block inside ``step``), so the table can
    tell averaging traffic from the DHT's upkeep (progress records, metrics, routing) that runs all the time.

    With ``max_steps`` it also sets ``stop`` after that many local steps, so that every mode trains on the same
    number of samples per peer (the loop's own limits are global steps and seconds)."""

    def __init__(self, opt, stop=None, max_steps: int = 0) -> None:
        self.inner = opt
        self.round_bytes = self.rounds = self.local_steps = 0
        self.round_seconds = 0.0
        self.stop, self.max_steps = stop, max_steps

    def step(self, batch_size: int) -> bool:
        tx0, t0 = tx_bytes(), time.perf_counter()
        advanced = self.inner.step(batch_size)
        if advanced:
            self.rounds += 1
            self.round_bytes += tx_bytes() - tx0
            self.round_seconds += time.perf_counter() - t0
        self.local_steps += 1
        if self.stop is not None and 0 < self.max_steps <= self.local_steps:
            self.stop.set()
        return advanced

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def worker(opts: argparse.Namespace) -> None:
    """One peer inside its namespace: the real swarm stack on an MLP (compute without data loading), or with
    ``--model electra`` on the real ELECTRA pair, objective and corpus (``bench.swarmlib.electra``)."""
    import torch

    from peer.config import PeerSettings, SwarmSpec
    from peer.run.records import LocalMetrics
    from peer.swarm.averaging import build_swarm_optimizer
    from peer.swarm.dht import start_dht, visible_maddrs
    from peer.swarm.loop import LoopOptions, LoopParts, train_loop
    from peer.swarm.metrics import fetch_metrics, make_validators, publish_metrics
    from peer.swarm.shutdown import StopSignal
    from peer.swarm.state import pull_state_from_peers

    torch.set_num_threads(1)
    out, i, n = Path(opts.out), opts.index, opts.peers[0]
    run_id = f"bench-{opts.mode}-{n}-{'state' if opts.role != 'train' else 'train'}"
    electra = opts.model == "electra" and opts.role == "train"
    if electra:
        run_id = f"bench-electra-{opts.mode}-{opts.codec}-{opts.inner_steps}-{n}"
    b = opts.batch
    peer = PeerSettings(initial_peers=opts.initial, host_maddrs=[f"/ip4/{SUBNET}.{i + 1}/tcp/0"])
    spec = SwarmSpec(
        target_batch_size=b * n,
        averaging="sync" if opts.mode == "sync" else "diloco",
        overlap_rounds=opts.mode == "overlap",
        inner_steps=opts.inner_steps,
        # the MLP's baseline: plain fp32 all-reduce; --runs names each mode's codec (``--codec``), sync's included
        compression=opts.codec or (opts.compression if opts.mode != "sync" else "none"),
        momentum_compression=opts.momentum_compression,
        progress_report_interval=opts.progress_interval,
        momentum_sync=None if opts.momentum_sync == "default" else opts.momentum_sync,
        matchmaking_time=3.0,
        averaging_timeout=60.0,
        load_state_timeout=300.0,
    )
    signing = make_validators(run_id)
    dht = start_dht(peer, signing.validators)
    (out / f"maddrs{i}.json").write_text(json.dumps({"maddrs": visible_maddrs(dht)}))
    torch.manual_seed(0)
    h = opts.hidden
    if electra:
        from bench.swarmlib.electra import worker_parts
        from peer.trainer import step_spec
        from peer.trainer.optim import param_groups
        from peer.trainer.recipe import run_optimizer_factories

        real = worker_parts(opts, Path(opts.model_dir), seed=i)
        params = real.params
        # the real peer's recipe: AdamW over decay / no-decay groups (peer.swarm.session)
        opt = build_swarm_optimizer(
            dht,
            run_id,
            spec,
            param_groups(params, real.cfg.train.weight_decay),
            *run_optimizer_factories(real.cfg),
            batch_size=b,
            verbose=opts.verbose,
        )
    else:
        model = torch.nn.Sequential(torch.nn.Linear(h, 4 * h), torch.nn.GELU(), torch.nn.Linear(4 * h, h))
        params = list(model.parameters())
        # the state download moves what a real peer's does: parameters and AdamW's two moments (3x the parameters)
        inner = torch.optim.SGD if opts.role == "train" else torch.optim.AdamW
        opt = build_swarm_optimizer(
            dht, run_id, spec, params, lambda p: inner(p, lr=1e-3), None, batch_size=b, verbose=opts.verbose
        )
    try:
        if opts.role == "donor":
            while not (out / "done").exists():
                time.sleep(0.5)
            return
        if opts.role == "joiner":
            mb = sum(p.numel() * 4 for p in params) / 1e6  # of parameters; the state is 3x that with AdamW
            deadline = time.monotonic() + 120
            while state_sources(dht, run_id) < 2:  # the donor (and we) announced as state sources
                if time.monotonic() > deadline:
                    raise RuntimeError("the donor never announced its state")
                time.sleep(0.5)
            rx0, t0 = rx_bytes(), time.perf_counter()
            # the download `peer join` does (peer.swarm.state): the state averager's state only; hivemind's own
            # Optimizer.load_state_from_peers also fetches the gradient averager's buffers, twice the bytes
            if not pull_state_from_peers(opt, list(model.named_parameters()), dht, run_id, timeout=300.0):
                raise RuntimeError("the state download failed")
            seconds = time.perf_counter() - t0
            (out / f"result{i}.json").write_text(
                json.dumps(dict(mb=mb, seconds=seconds, rx_mb=(rx_bytes() - rx0) / 1e6))
            )
            return
        hello = LocalMetrics(
            step=0,
            samples_per_second=0.0,
            samples_accumulated=0,
            samples_total=0,
            loss=0.0,
            mini_steps=0,
            time=time.time(),
        )
        stop = StopSignal()
        counted = RoundBytes(opt, stop, opts.local_steps)
        curve = None
        if electra:
            from bench.swarmlib.electra import HeldoutCurve, eval_every

            curve = HeldoutCurve(real.evaluate, lambda: counted.local_steps, b, tx_bytes, opts.eval_at)
            curve.point()  # step 0: the grown pair every peer starts from
            parts = LoopParts(
                params,
                real.objective,
                real.batches,
                step=step_spec(real.cfg.train, torch.device("cpu")),
                evaluate=curve,
                eval_every=eval_every(opts.eval_at),
            )
        else:
            gen = torch.Generator().manual_seed(i)

            def batches():
                while True:
                    x = torch.randn(b, h, generator=gen)
                    yield {"x": x}

            def loss_fn(batch):
                return (model(batch["x"]) - batch["x"]).pow(2).mean()

            parts = LoopParts(params, loss_fn, batches())
        deadline = time.monotonic() + 120
        while len(fetch_metrics(dht, run_id)) < n and time.monotonic() < deadline:
            publish_metrics(dht, run_id, signing, hello, expiration=60)
            time.sleep(0.5)
        tx0, train_start = tx_bytes(), time.time()
        if curve is not None:
            curve.open()
        result = train_loop(
            dht,
            run_id,
            signing,
            counted,
            parts,
            stop,
            LoopOptions(max_seconds=opts.seconds, show_status=False, metrics_every=opts.metrics_every),
        )
        tx, train_end = tx_bytes() - tx0, time.time()
        if opts.mode == "overlap":
            opt.finish_round(timeout=30.0)  # the last round's traffic belongs to this window too
            tx = tx_bytes() - tx0
        extra = {}
        if curve is not None:
            eval_seconds = curve.seconds  # inside the loop's window; the final evaluation below is outside it
            curve.point(final=True)  # the model this peer ends with (an overlapped round's outcome applied)
            extra = dict(
                eval_seconds=eval_seconds,
                curve=curve.points,
                final=curve.points[-1],
                local_steps=result.local_steps,
                parameters=sum(p.numel() for p in params),
            )
        (out / f"result{i}.json").write_text(
            json.dumps(
                dict(
                    samples=result.samples,
                    compute_seconds=result.compute_seconds,
                    wall_seconds=result.wall_seconds,
                    step_seconds=result.step_seconds,
                    metrics_seconds=result.metrics_seconds,
                    tx_bytes=tx,
                    round_tx_bytes=counted.round_bytes,
                    rounds=counted.rounds,
                    round_seconds=counted.round_seconds,
                    global_step=result.global_step,
                    gradient_steps=opt.opt.gradient_steps,
                    gradient_steps_local=opt.opt.gradient_steps_local,
                    catch_ups=opt.catch_ups,
                    rounds_averaged=opt.background.rounds_averaged if opt.background is not None else None,
                    train_start=train_start,
                    train_end=train_end,
                    **extra,
                )
            )
        )
        time.sleep(10)  # let the others finish their last round with us
    finally:
        opt.shutdown()
        dht.shutdown()
