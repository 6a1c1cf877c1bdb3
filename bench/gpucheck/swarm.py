"""The swarm part: two real ``python -m peer join`` processes on one device, diloco with overlapped rounds; per peer
its rate over the window both trained and its totals from its exit line, and the device's figures meanwhile."""

from __future__ import annotations

import re
import signal
import time
from dataclasses import asdict
from pathlib import Path

from bench.faultlib.procs import RunFiles, TinyModel, start_python
from bench.gpucheck.plan import Plan, peer_flags
from bench.gpucheck.samplers import Sampler, gpu_figures, nvidia_smi, shm_used, smi_sample, tree_rss
from peer.children import Child, ProcessSet

VISIBLE = re.compile(r"visible at (.+)$", re.M)
LEFT = re.compile(
    r"left the swarm at global step (\d+): (\d+) local steps, (\d+) samples, last loss (\S+), "
    r"compute utilisation (\d+)%"
)
PROGRESS = re.compile(r"local step (\d+): global step (\d+) \| ([\d.]+) samples/s")


def last_local_step(text: str) -> int:
    steps = PROGRESS.findall(text)
    return int(steps[-1][0]) if steps else 0


def peer_result(child: Child, started: float | None, exited_at: float | None) -> dict:
    """A peer's totals from its exit line, and its rate from its first local step to its exit (leaving included)."""
    text = child.text()
    left = LEFT.search(text)
    rates = PROGRESS.findall(text)
    result = {
        "name": child.name,
        "exit_code": child.proc.returncode,
        "global_step": int(left.group(1)) if left else None,
        "local_steps": int(left.group(2)) if left else None,
        "samples": int(left.group(3)) if left else None,
        "compute_utilisation_pct": int(left.group(5)) if left else None,
        "last_logged_samples_per_second": float(rates[-1][2]) if rates else None,
        "first_step_to_exit_seconds": None,
        "samples_per_second_to_exit": None,
    }
    if left and started is not None and exited_at is not None:
        result["first_step_to_exit_seconds"] = exited_at - started
        result["samples_per_second_to_exit"] = result["samples"] / max(exited_at - started, 1e-9)
    return result


def flops_per_sequence(model: TinyModel) -> float:
    """``gpu_step``'s model FLOPs of one training sequence at this size (built on the meta device: no memory)."""
    import torch

    from bench.gpu_step import build_pair, model_flops_per_step
    from peer.config import ModelSpec
    from peer.objectives.masking import max_predictions

    spec = ModelSpec(
        hidden_size=model.hidden_size,
        num_layers=model.num_layers,
        num_heads=model.num_heads,
        ffn_size=model.ffn_size,
        max_position_embeddings=max(64, model.seq_len),
    )
    with torch.device("meta"):
        models = build_pair(spec, torch.device("meta"))
    return model_flops_per_step(models, 1, model.seq_len, max_predictions(model.seq_len, 0.15))


def run_swarm(plan: Plan, run: RunFiles, out: Path, seconds: float) -> dict:
    """Two ``peer join`` processes on one device for ``seconds`` of training each; their figures and the device's."""
    shm_before = shm_used()
    smi = Sampler(smi_sample, every=0.5) if nvidia_smi() else None
    with ProcessSet(out / "procs") as procs:
        peers: list[Child] = []
        for i in range(2):
            work = out / "procs" / f"peer{i}"
            argv = ["-m", "peer", "join", "-c", str(run.config), "--init_dir", str(run.init_dir),
                    "--work_dir", str(work), "--identity_path", str(work.with_suffix(".id")),
                    "--host_maddrs", "/ip4/127.0.0.1/tcp/0", "--no_status", "--wait_for_peers", "2",
                    *peer_flags(plan)]  # fmt: skip
            if peers:
                first = peers[0].wait_for_line(VISIBLE, timeout=180)
                argv += ["--initial_peers", *first.group(1).split()]
            peers.append(start_python(procs, f"peer{i}", argv))
        rss = Sampler(lambda: tree_rss([p.pid for p in peers]), every=1.0)
        shm = Sampler(shm_used, every=1.0)
        stepping: dict[str, float] = {}  # when each peer's first local step was seen: its training started
        for p in peers:  # (--max_seconds would count the wait for the other peer too)
            p.wait_for_line(PROGRESS, timeout=300)
            stepping[p.name] = time.time()
        train_start = time.time()  # both train from here: count the local steps each logs until train_end
        steps_at_start = {p.name: last_local_step(p.text()) for p in peers}
        time.sleep(seconds)
        train_end = time.time()
        steps_at_end = {p.name: last_local_step(p.text()) for p in peers}
        exited: dict[str, float] = {}
        for p in peers:
            p.proc.send_signal(signal.SIGTERM)  # finishes its step, leaves the swarm, prints its totals
        deadline = time.monotonic() + 120
        while len(exited) < len(peers) and time.monotonic() < deadline:
            for p in peers:
                if p.name not in exited and not p.alive():
                    exited[p.name] = time.time()
            time.sleep(0.2)
        rss_samples, shm_samples = rss.stop(), shm.stop()
        smi_rows = smi.stop() if smi else []
        # leaving procs stops any peer still running (SIGTERM: it leaves the swarm cleanly)
    (out / "nvidia_smi.csv").write_text("".join(",".join(map(str, r)) + "\n" for r in smi_rows))
    window = train_end - train_start
    results = []
    for p in peers:
        result = peer_result(p, stepping.get(p.name), exited.get(p.name))
        steps = steps_at_end[p.name] - steps_at_start[p.name]
        result["window_seconds"] = window
        result["samples_per_second"] = steps * plan.model.batch_size / window  # both training, no start or exit
        results.append(result)
    rates = [r["samples_per_second"] for r in results]
    total = sum(rates) if all(r is not None for r in rates) else None
    return {
        "model": asdict(plan.model),
        "averaging": f"diloco, overlapped rounds, {plan.inner_steps} inner steps",
        "device": plan.device,
        "precision": plan.precision,
        "compile_asked": plan.compile,  # peer join does not compile yet (issue 22): asked for, not applied
        "seconds_asked": seconds,
        "peers": results,
        "samples_per_second": total,
        "flops_per_sequence": flops_per_sequence(plan.model),
        "gpu": gpu_figures(smi_rows, train_start, train_end),
        "host_rss_peak_bytes": max(rss_samples, default=None),
        "dev_shm_peak_bytes": (max(shm_samples) - shm_before) if shm_samples else None,
    }
