"""Swarm benchmark on an emulated network: N peers in their own network namespaces on one bridge, each link shaped
with ``tc tbf`` (default 100 mbit), running the real ``peer.swarm`` stack (DHT, hivemind.Optimizer, train_loop).

Prints, per number of peers and averaging mode: compute utilisation (forward/backward time / wall time), bytes sent
per sample (veth tx counters), aggregate samples/s vs one peer; and the state-download MB/s vs the link rate.

Each peer stands for one volunteer's machine, so each gets the same CPU budget (``--cpu_per_peer`` cores, a cgroup
CPU quota over the peer and everything it starts: p2pd, hivemind's averager and DHT processes): N peers then have N
times the compute of one, as N volunteers do, instead of sharing whatever cores this machine has. The table shows
the cores each configuration actually used, so a budget that was not met is visible. The state download runs
without a quota: it measures the link.

Needs root (ip netns, tc, cgroups). Creates only namespaces and cgroups named ``wsb-*`` and removes them on exit,
also on Ctrl-C.

    sudo .venv/bin/python bench/swarm.py --peers 1 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from peer.children import Child, ProcessSet  # noqa: E402

HUB = "wsb-hub"
SUBNET = "10.77.0"
CGROUP_V1 = Path("/sys/fs/cgroup")  # cgroup v1: the "cpu" and "cpuacct" hierarchies


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def netns(i: int) -> str:
    return f"wsb-p{i}"


def build_network(n: int, rate: str) -> None:
    """Hub namespace with a bridge; peer i gets veth eth0 = SUBNET.(i+1), shaped both ways by tbf."""
    sh("ip", "netns", "add", HUB)
    sh("ip", "netns", "exec", HUB, "ip", "link", "add", "br0", "type", "bridge")
    sh("ip", "netns", "exec", HUB, "ip", "link", "set", "br0", "up")
    for i in range(n):
        ns = netns(i)
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", f"wsb{i}a", "type", "veth", "peer", "name", f"wsb{i}b")
        sh("ip", "link", "set", f"wsb{i}a", "netns", ns)
        sh("ip", "link", "set", f"wsb{i}b", "netns", HUB)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", f"wsb{i}a", "name", "eth0")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", "eth0")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", HUB, "ip", "link", "set", f"wsb{i}b", "master", "br0")
        sh("ip", "netns", "exec", HUB, "ip", "link", "set", f"wsb{i}b", "up")
        for where, dev in ((ns, "eth0"), (HUB, f"wsb{i}b")):
            sh(
                "ip",
                "netns",
                "exec",
                where,
                "tc",
                "qdisc",
                "add",
                "dev",
                dev,
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                "256kb",
                "latency",
                "50ms",
            )


def teardown(n: int) -> None:
    for name in [netns(i) for i in range(n)] + [HUB]:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


class CpuBudget:
    """One cgroup per peer with a CFS quota of ``cores`` (cgroup v1 ``cpu``; usage read from ``cpuacct``).

    A worker joins its cgroup before it execs (``enter``), so p2pd and the processes hivemind forks inherit it."""

    def __init__(self, n: int, cores: float) -> None:
        self.cores = cores
        self.paths = [[CGROUP_V1 / kind / f"wsb-p{i}" for kind in ("cpu", "cpuacct")] for i in range(n)]

    @staticmethod
    def available() -> bool:
        return (CGROUP_V1 / "cpu" / "cpu.cfs_quota_us").is_file() and (CGROUP_V1 / "cpuacct").is_dir()

    def create(self) -> None:
        if not self.available():
            raise SystemExit(
                "error: --cpu_per_peer needs cgroup v1's cpu and cpuacct controllers under /sys/fs/cgroup "
                "(or pass --cpu_per_peer 0 to share the machine's cores)"
            )
        for cpu, acct in self.paths:
            cpu.mkdir(exist_ok=True)
            acct.mkdir(exist_ok=True)
            period = int((cpu / "cpu.cfs_period_us").read_text())
            (cpu / "cpu.cfs_quota_us").write_text(str(int(self.cores * period)))

    def enter(self, i: int) -> None:
        """Runs in the child between fork and exec."""
        for path in self.paths[i]:
            (path / "cgroup.procs").write_text(str(os.getpid()))

    def used_seconds(self, i: int) -> float:
        """CPU seconds used so far by peer ``i``'s whole tree. Read here, not by the worker: ``ip netns exec``
        mounts a fresh /sys for it, without the cgroup file systems."""
        return int((self.paths[i][1] / "cpuacct.usage").read_text()) / 1e9

    def remove(self) -> None:
        for group in self.paths:
            for path in group:
                try:
                    path.rmdir()
                except OSError:
                    pass  # absent, or a process still inside (removed at the next run's create)


class CpuSampler:
    """Samples every peer's CPU seconds twice a second, so a worker's training window (its wall-clock start and
    end) can be read off afterwards."""

    def __init__(self, budget: CpuBudget, n: int) -> None:
        self.budget, self.n = budget, n
        self.samples: list[tuple[float, list[float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.samples.append((time.time(), [self.budget.used_seconds(i) for i in range(self.n)]))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, i: int, start: float, end: float) -> float:
        def at(t: float) -> float:
            return min(self.samples, key=lambda sample: abs(sample[0] - t))[1][i]

        return at(end) - at(start) if self.samples else float("nan")


def start_worker(procs: ProcessSet, i: int, args: list[str], budget: CpuBudget | None = None) -> Child:
    """Worker ``i`` in its namespace (and cgroup), in a session of its own, logging to ``procs.work/peer<i>.log``."""
    return procs.start(
        f"peer{i}",
        [
            "ip",
            "netns",
            "exec",
            netns(i),
            sys.executable,
            __file__,
            "--worker",
            "--index",
            str(i),
            "--out",
            str(procs.work),
            *args,
        ],
        env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        cwd=REPO,
        preexec=(lambda: budget.enter(i)) if budget is not None else None,
    )


def workers(out: Path) -> ProcessSet:
    """The workers of one phase. Leaving the set early (Ctrl-C, a failed worker) kills every worker's session at
    once (p2pd included), without waiting for the others to leave the swarm; after a phase, ``procs.wait(180)``
    gives them time to leave on their own (slow on a loaded machine) first."""
    return ProcessSet(out, grace=0)


def wait_file(procs: ProcessSet, path: Path, timeout: float) -> dict:
    """The JSON file a worker writes; fails when a worker exits with an error, with its log tail."""

    def found() -> dict | None:
        return json.loads(path.read_text()) if path.is_file() else None

    return procs.wait_until(found, timeout, f"no {path.name} (peer logs in {path.parent})", retry_on=(ValueError,))


def run_phase(n: int, mode: str, opts: argparse.Namespace, out: Path, budget: CpuBudget | None) -> list[dict]:
    out.mkdir(parents=True)
    seconds = opts.sync_seconds if mode == "sync" else opts.seconds
    common = [
        "--mode",
        mode,
        "--peers",
        str(n),
        "--seconds",
        str(seconds),
        "--hidden",
        str(opts.hidden),
        "--inner_steps",
        str(opts.inner_steps),
        "--batch",
        str(opts.batch),
        "--metrics_every",
        str(opts.metrics_every),
        "--compression",
        opts.compression,
        "--momentum_compression",
        opts.momentum_compression,
        "--progress_interval",
        str(opts.progress_interval),
        "--momentum_sync",
        opts.momentum_sync,
        *(["--verbose"] if opts.verbose else []),
    ]
    sampler = CpuSampler(budget, n) if budget else None
    with workers(out) as procs:
        try:
            start_worker(procs, 0, common, budget)
            boot = wait_file(procs, out / "maddrs0.json", 300)["maddrs"]
            for i in range(1, n):
                start_worker(procs, i, [*common, "--initial", *boot], budget)
            results = [wait_file(procs, out / f"result{i}.json", seconds + 300) for i in range(n)]
        finally:
            if sampler:
                sampler.stop()
        procs.wait(180)
    for i, r in enumerate(results):
        r["cpu_seconds"] = sampler.between(i, r["train_start"], r["train_end"]) if sampler else float("nan")
    return results


def state_download(opts: argparse.Namespace, out: Path) -> dict:
    out.mkdir(parents=True)
    common = ["--mode", "sync", "--peers", "2", "--hidden", str(opts.state_hidden), "--role"]
    with workers(out) as procs:
        start_worker(procs, 0, [*common, "donor"])
        boot = wait_file(procs, out / "maddrs0.json", 300)["maddrs"]
        start_worker(procs, 1, [*common, "joiner", "--initial", *boot])
        result = wait_file(procs, out / "result1.json", 300)
        (out / "done").write_text("1")
        procs.wait(180)
    return result


def orchestrate(opts: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        sys.exit("error: bench/swarm.py needs root (network namespaces and tc)")
    n_max = max(max(opts.peers), 2)
    teardown(n_max)
    root = Path(tempfile.mkdtemp(prefix="wsb-"))
    rows = []
    cores = opts.cpu_per_peer if opts.cpu_per_peer is not None else min(1.0, 0.8 * (os.cpu_count() or 1) / n_max)
    budget = CpuBudget(n_max, cores) if cores > 0 else None
    try:
        build_network(n_max, opts.rate)
        if budget:
            budget.create()
        for mode in opts.modes if not opts.state_only else []:
            for n in opts.peers:
                results = run_phase(n, mode, opts, root / f"{mode}-{n}", budget)
                samples = sum(r["samples"] for r in results)
                rows.append(
                    dict(
                        mode=mode,
                        peers=n,
                        cpu_per_peer=cores,
                        cores_used=sum(r["cpu_seconds"] / r["wall_seconds"] for r in results),
                        util=sum(r["compute_seconds"] for r in results) / sum(r["wall_seconds"] for r in results),
                        # where the rest of the wall time went: the swarm optimizer's step, publishing metrics
                        step_share=sum(r["step_seconds"] for r in results) / sum(r["wall_seconds"] for r in results),
                        metrics_share=(
                            sum(r["metrics_seconds"] for r in results) / sum(r["wall_seconds"] for r in results)
                        ),
                        bytes_per_sample=sum(r["tx_bytes"] for r in results) / max(samples, 1),
                        # an overlapped round sends in the background, so only the total is meaningful there
                        round_bytes_per_sample=(
                            sum(r["round_tx_bytes"] for r in results) / max(samples, 1)
                            if mode != "overlap"
                            else float("nan")
                        ),
                        other_bytes_per_s=(
                            sum((r["tx_bytes"] - r["round_tx_bytes"]) / r["wall_seconds"] for r in results)
                            if mode != "overlap"
                            else float("nan")
                        ),
                        rounds=min(r["rounds"] for r in results),
                        round_seconds=max(r["round_seconds"] / max(r["rounds"], 1) for r in results),
                        samples_per_s=sum(r["samples"] / r["wall_seconds"] for r in results),
                        global_steps=min(r["global_step"] for r in results),
                        # sync: the share of the peers' global steps taken on their own gradients only (no group or
                        # a failed round); with 2+ peers anything but ~0 means the baseline did not all-reduce
                        alone=(
                            sum(r["gradient_steps_local"] for r in results)
                            / max(sum(r["gradient_steps"] for r in results), 1)
                            if mode == "sync"
                            else float("nan")
                        ),
                        catch_ups=sum(r.get("catch_ups", 0) for r in results),
                        rounds_averaged=[r.get("rounds_averaged") for r in results],
                    )
                )
                print(json.dumps(rows[-1]), flush=True)
        dl = state_download(opts, root / "state") if opts.state_hidden > 0 else None
        if dl is not None:
            print(json.dumps(dict(state_download=dl)), flush=True)
    finally:
        teardown(n_max)
        if budget:
            budget.remove()
    print_report(rows, dl, opts)
    if opts.json:
        settings = {k: v for k, v in vars(opts).items() if k not in ("worker", "index", "out", "mode", "initial")}
        payload = dict(settings=settings, rows=rows, state_download=dl, machine_cores=os.cpu_count())
        Path(opts.json).write_text(json.dumps(payload, indent=1) + "\n")
    print(f"(peer logs: {root})")


def print_report(rows: list[dict], dl: dict | None, opts: argparse.Namespace) -> None:
    print(
        f"\n{'mode':8} {'peers':>5} {'cores':>6} {'util':>6} {'in step':>7} {'metrics':>7} {'bytes/sample':>13} "
        f"{'in rounds':>10} {'other B/s':>10} "
        f"{'s/round':>8} {'samples/s':>10} {'vs 1 peer':>9} {'global steps':>12} {'alone':>6}"
    )
    for row in rows:
        one = next((r for r in rows if r["mode"] == row["mode"] and r["peers"] == 1), None)
        speedup = row["samples_per_s"] / one["samples_per_s"] if one else float("nan")
        print(
            f"{row['mode']:8} {row['peers']:5d} {row['cores_used']:6.2f} {row['util']:6.1%} "
            f"{row.get('step_share', float('nan')):7.1%} {row.get('metrics_share', float('nan')):7.1%} "
            f"{row['bytes_per_sample']:13.0f} {row['round_bytes_per_sample']:10.0f} {row['other_bytes_per_s']:10.0f} "
            f"{row['round_seconds']:8.2f} {row['samples_per_s']:10.1f} {speedup:8.2f}x {row['global_steps']:12d} "
            f"{row.get('alone', float('nan')):6.0%}"
        )
    for low in ("diloco", "overlap"):
        for n in opts.peers:
            s = next((r for r in rows if r["mode"] == "sync" and r["peers"] == n), None)
            d = next((r for r in rows if r["mode"] == low and r["peers"] == n), None)
            if s and d and n > 1 and d["bytes_per_sample"] > 0:
                in_rounds = s["round_bytes_per_sample"] / max(d["round_bytes_per_sample"], 1e-9)
                print(
                    f"{n} peers: all-reduce every step sends {s['bytes_per_sample'] / d['bytes_per_sample']:.0f}x "
                    f"more bytes per sample than {low}"
                    + (f" ({in_rounds:.0f}x counting the averaging rounds only)" if low == "diloco" else "")
                )
    if dl is not None:
        rate_mb = parse_rate_mb(opts.rate)
        print(
            f"state download: {dl['mb']:.1f} MB of parameters ({dl['rx_mb']:.1f} MB received) in {dl['seconds']:.2f}s"
            f" = {dl['mb'] / dl['seconds']:.2f} MB/s of parameters, {dl['rx_mb'] / dl['seconds']:.2f} MB/s on the "
            f"wire, wire = {dl['rx_mb'] / dl['seconds'] / rate_mb:.0%} of the {opts.rate} link ({rate_mb:.2f} MB/s)"
        )


def parse_rate_mb(rate: str) -> float:
    units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
    for suffix, scale in units.items():
        if rate.endswith(suffix):
            return float(rate[: -len(suffix)]) * scale / 8 / 1e6
    raise SystemExit(f"error: rate must end in kbit, mbit or gbit: {rate}")


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
    tell averaging traffic from the DHT's upkeep (progress records, metrics, routing) that runs all the time."""

    def __init__(self, opt) -> None:
        self.inner = opt
        self.round_bytes = self.rounds = 0
        self.round_seconds = 0.0

    def step(self, batch_size: int) -> bool:
        tx0, t0 = tx_bytes(), time.perf_counter()
        advanced = self.inner.step(batch_size)
        if advanced:
            self.rounds += 1
            self.round_bytes += tx_bytes() - tx0
            self.round_seconds += time.perf_counter() - t0
        return advanced

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def worker(opts: argparse.Namespace) -> None:
    """One peer inside its namespace: the real swarm stack on an MLP (compute without data loading)."""
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
    b = opts.batch
    peer = PeerSettings(initial_peers=opts.initial, host_maddrs=[f"/ip4/{SUBNET}.{i + 1}/tcp/0"])
    spec = SwarmSpec(
        target_batch_size=b * n,
        averaging="sync" if opts.mode == "sync" else "diloco",
        overlap_rounds=opts.mode == "overlap",
        inner_steps=opts.inner_steps,
        compression=opts.compression if opts.mode != "sync" else "none",  # the baseline: plain fp32 all-reduce
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
        deadline = time.monotonic() + 120
        while len(fetch_metrics(dht, run_id)) < n and time.monotonic() < deadline:
            publish_metrics(dht, run_id, signing, hello, expiration=60)
            time.sleep(0.5)
        gen = torch.Generator().manual_seed(i)

        def batches():
            while True:
                x = torch.randn(b, h, generator=gen)
                yield {"x": x}

        def loss_fn(batch):
            return (model(batch["x"]) - batch["x"]).pow(2).mean()

        tx0, train_start = tx_bytes(), time.time()
        counted = RoundBytes(opt)
        result = train_loop(
            dht,
            run_id,
            signing,
            counted,
            LoopParts(params, loss_fn, batches()),
            StopSignal(),
            LoopOptions(max_seconds=opts.seconds, show_status=False, metrics_every=opts.metrics_every),
        )
        tx, train_end = tx_bytes() - tx0, time.time()
        if opts.mode == "overlap":
            opt.finish_round(timeout=30.0)  # the last round's traffic belongs to this window too
            tx = tx_bytes() - tx0
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
                )
            )
        )
        time.sleep(10)  # let the others finish their last round with us
    finally:
        opt.shutdown()
        dht.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument(
        "--modes",
        nargs="+",
        default=["sync", "overlap"],
        choices=["sync", "diloco", "overlap"],
        help="sync: all-reduce of fp32 gradients every step (the baseline); diloco: DiLoCo, the round inside step(); "
        "overlap: DiLoCo with the round in the background (swarm.overlap_rounds)",
    )
    p.add_argument("--rate", default="100mbit", help="tbf rate of every peer's link")
    p.add_argument("--seconds", type=float, default=330.0, help="training seconds per diloco / overlap configuration")
    p.add_argument("--sync_seconds", type=float, default=90.0, help="training seconds per sync configuration")
    p.add_argument(
        "--cpu_per_peer",
        type=float,
        default=None,
        help="CPU cores each peer may use (a cgroup quota); default: 80%% of this machine's cores over the largest "
        "number of peers, at most 1; 0: no quota (the peers share the machine)",
    )
    p.add_argument("--hidden", type=int, default=512, help="MLP width (params = 8 h^2)")
    p.add_argument(
        "--state_hidden", type=int, default=1024, help="MLP width for the state download (32 MB at 1024; 0: skip it)"
    )
    p.add_argument("--state_only", action="store_true", help="measure the state download alone")
    p.add_argument("--json", default=str(REPO / "bench" / "results" / "swarm.json"), help="write the rows here")
    p.add_argument("--inner_steps", type=int, default=500, help="diloco: local steps per outer round (OpenDiLoCo: 500)")
    p.add_argument(
        "--compression",
        default="fp16",
        choices=["fp16", "scaled_fp16", "uniform8bit", "minmax8bit", "blockwise8bit"],
        help="diloco: codec of the averaged parameters (sync always sends plain fp32: the all-reduce baseline)",
    )
    p.add_argument(
        "--momentum_compression",
        default="minmax8bit",
        choices=["none", "fp16", "scaled_fp16", "uniform8bit", "minmax8bit", "blockwise8bit"],
        help="diloco: codec of the outer momentum when it is averaged (momentum_sync average)",
    )
    p.add_argument("--progress_interval", type=float, default=1.0, help="seconds between hivemind progress records")
    p.add_argument(
        "--momentum_sync",
        default="default",
        choices=["default", "average", "catch_up"],
        help="diloco: swarm.momentum_sync (default: SwarmSpec's, catch_up for overlap and average for diloco)",
    )
    p.add_argument("--metrics_every", type=float, default=5.0, help="seconds between LocalMetrics records")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument(
        "--verbose", action="store_true", help="hivemind's per-round status lines in each peer's log (peer<i>.log)"
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="sync", help=argparse.SUPPRESS)
    p.add_argument("--initial", nargs="*", default=[], help=argparse.SUPPRESS)
    p.add_argument("--role", default="train", help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.worker:
        worker(opts)
    else:
        orchestrate(opts)


if __name__ == "__main__":
    main()
