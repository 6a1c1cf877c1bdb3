"""Sync mode's host <-> device copies per global step, and whether their host buffers are pinned (issue 22).

One real sync-mode peer in this process (``build_swarm_optimizer``: a hivemind DHT, the guarded averagers, the
offloaded optimizer) over an ELECTRA discriminator (``bench/gpu_step.py``'s ``build_pair``), every local step a
global step (target batch = micro-batch). Each global step the gradient averager copies the accumulated gradients
device -> host (``load_accumulators_into_averager_``) and the state averager the updated parameters host -> device
(``_apply_optimizer_parameters_``); both are timed here with the device synchronised before and after (the bench's
own waits, not the peer's). Next to them, the same gradients copied into fresh pageable tensors: what the copy
costs without pinning. Reports ``offloaded_buffers_pinned()`` of the state averager: on CUDA every parameter and
gradient buffer should be pinned, on CPU none.

    .venv/bin/python bench/offload_copies.py --device cuda --json OUT/offload_copies.json   # (bench/gpu_check.sh)
    .venv/bin/python bench/offload_copies.py --device cpu --size tiny                      # the dry run's
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.gpu_step import GPU_SIZES, build_pair  # noqa: E402
from peer.config import ModelSpec, PeerSettings, SwarmSpec, TrainSpec, load_config  # noqa: E402
from peer.swarm.averaging import build_swarm_optimizer  # noqa: E402
from peer.swarm.dht import start_dht  # noqa: E402
from peer.swarm.metrics import make_validators  # noqa: E402
from peer.trainer import make_optimizer  # noqa: E402

SIZES = {
    "demo": load_config(ROOT / "configs" / "demo.yaml").model,
    "base": GPU_SIZES["base"],
    "tiny": ModelSpec(hidden_size=32, num_layers=2, num_heads=2, ffn_size=64),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timed:
    """Wraps one method of one object: the seconds of each call, the device synchronised before and after."""

    def __init__(self, obj, name: str, device: torch.device) -> None:
        self.seconds: list[float] = []
        original = getattr(obj, name)

        def timed(*args, **kwargs):
            sync(device)
            t = time.perf_counter()
            result = original(*args, **kwargs)
            sync(device)
            self.seconds.append(time.perf_counter() - t)
            return result

        setattr(obj, name, timed)


def pageable_copy_seconds(grads: list[torch.Tensor], device: torch.device, repeats: int = 3) -> float:
    """The median time of copying ``grads`` device -> host into fresh pageable tensors (allocation not timed)."""
    times = []
    for _ in range(repeats):
        targets = [torch.empty(g.shape, dtype=g.dtype) for g in grads]
        sync(device)
        t = time.perf_counter()
        for target, grad in zip(targets, grads, strict=True):
            target.copy_(grad, non_blocking=True)
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(device: torch.device, size: str, steps: int, batch: int, seq: int) -> dict:
    models = build_pair(SIZES[size], device)
    model = models.discriminator
    params = [p for p in model.parameters() if p.requires_grad]
    signing = make_validators("offloadcopies")
    dht = start_dht(PeerSettings(host_maddrs=["/ip4/127.0.0.1/tcp/0"]), signing.validators)
    opt = None
    try:
        factory = lambda p: make_optimizer(p, TrainSpec(optimizer="adamw", warmup_steps=0, lr=1e-5))  # noqa: E731
        spec = SwarmSpec(target_batch_size=batch, matchmaking_time=1.0, averaging_timeout=5.0)
        opt = build_swarm_optimizer(dht, "offloadcopies", spec, params, factory, None, batch_size=batch)
        hm = opt.opt
        d2h = Timed(hm.grad_averager, "load_accumulators_into_averager_", device)
        h2d = Timed(hm.state_averager, "_apply_optimizer_parameters_", device)
        gen = torch.Generator(device="cpu").manual_seed(0)
        for _ in range(steps):
            ids = torch.randint(1000, 30000, (batch, seq), generator=gen).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(input_ids=ids).logits
            logits.float().pow(2).mean().backward()
            opt.step(batch)
            opt.zero_grad()
        sync(device)
        pinned = hm.state_averager.offloaded_buffers_pinned()
        grads = [torch.randn_like(p) for p in params]
        nbytes = sum(p.numel() * 4 for p in params)
        skip = 1 if len(d2h.seconds) > 1 else 0  # the first global step allocates
        return {
            "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "size": size,
            "parameters": sum(p.numel() for p in params),
            "tensors": len(params),
            "bytes_each_way": nbytes,
            "global_steps": opt.global_step,
            "offloaded_buffers": pinned,
            "all_pinned": pinned["parameters_pinned"] == pinned["parameters"] > 0
            and pinned["gradients_pinned"] == pinned["gradients"] > 0,
            "d2h_gradients_seconds": d2h.seconds,
            "h2d_parameters_seconds": h2d.seconds,
            "d2h_median_seconds": statistics.median(d2h.seconds[skip:]) if d2h.seconds else None,
            "h2d_median_seconds": statistics.median(h2d.seconds[skip:]) if h2d.seconds else None,
            "d2h_pageable_seconds": pageable_copy_seconds(grads, device),
        }
    finally:
        if opt is not None:
            opt.shutdown()
        dht.shutdown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--size", choices=tuple(SIZES), default="demo")
    p.add_argument("--steps", type=int, default=4, help="global steps (each local step is one)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA device (use --device cpu)", file=sys.stderr)
        return 2
    if args.steps < 2 or args.batch < 1 or args.seq < 2:
        print("error: want --steps >= 2, --batch >= 1 and --seq >= 2", file=sys.stderr)
        return 2
    report = measure(torch.device(args.device), args.size, args.steps, args.batch, args.seq)
    mb = report["bytes_each_way"] / 2**20
    print(
        f"offloaded buffers on {report['device']}: {report['offloaded_buffers']} (all pinned: {report['all_pinned']}); "
        f"per global step {mb:.0f} MiB each way: gradients D2H {report['d2h_median_seconds'] * 1e3:.1f} ms "
        f"(pageable {report['d2h_pageable_seconds'] * 1e3:.1f} ms), parameters H2D "
        f"{report['h2d_median_seconds'] * 1e3:.1f} ms, over {report['global_steps']} global steps",
        flush=True,
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
