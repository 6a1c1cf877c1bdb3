"""GPU evidence in one call: ``bench/gpu_step.py``'s table, then a 2-process ``peer join`` swarm sharing the one GPU.

What it measures and where each figure comes from:

- the training-step table (HF ELECTRA step vs ours: sequences/s, MFU) — ``bench/gpu_step.py``, written to
  ``OUT/gpu_step.json``;
- sync mode's offloaded optimizer: whether the host buffers that cross to the GPU are pinned, and the gradient
  (device -> host) and parameter (host -> device) copies' time per global step, against a pageable copy of the same
  gradients — ``bench/offload_copies.py``, written to ``OUT/offload_copies.json``;
- the swarm: two real ``python -m peer join`` processes on the same GPU (``-c`` a run config written here, the
  second joining through the first's address), diloco with overlapped rounds, for ``--seconds`` of training each.
  Per peer: samples / the seconds between its "starting at global step" line and its exit, the last rate it logged,
  and its own compute utilisation (forward/backward time / wall time, from its exit line); for the swarm the sum,
  and MFU = that sum x the model's FLOPs per sequence (``gpu_step.model_flops_per_step``) / the peak ``gpu_step``
  measured;
- the GPU while the swarm trains: ``nvidia-smi`` sampled every 0.5 s (utilization.gpu: the share of time a kernel
  ran; memory.used: both peers together, its peak); the peers' host RSS and the machine's ``/dev/shm`` use (both
  peaks, sampled every second).

Everything goes to ``OUT/gpu_check.json`` (rewritten after each part, so a run cut short keeps what it measured) and
one summary is printed. ``--dry-run`` runs the same pipeline on the CPU at a tiny size (the CPU row of gpu_step on a
32-wide model, a 15 s swarm) so that it is tested without a GPU. The whole GPU run is held to ``--budget`` seconds
(the swarm gets what the table leaves), sized for one 10-minute device call with no network: everything it needs is
in the repository's .venv and the packaged MiniLM tokenizer.

    bench/gpu_check.sh OUT_DIR            # on the GPU machine
    bench/gpu_check.sh OUT_DIR --dry-run  # anywhere, < 1 minute

Flags of ``peer join`` that do not exist yet are set through ``--set train.KEY=VALUE`` on its ``-c`` config (see
:func:`peer_flags`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.faultlib.procs import RunFiles, TinyModel, prepare_run, start_python  # noqa: E402
from peer.children import Child, ProcessSet  # noqa: E402

VISIBLE = re.compile(r"visible at (.+)$", re.M)
LEFT = re.compile(
    r"left the swarm at global step (\d+): (\d+) local steps, (\d+) samples, last loss (\S+), "
    r"compute utilisation (\d+)%"
)
PROGRESS = re.compile(r"local step (\d+): global step (\d+) \| ([\d.]+) samples/s")


@dataclass(frozen=True)
class Plan:
    """What one run does: the GPU run, or the same pipeline at a tiny size on the CPU."""

    device: str  # cuda | cpu
    model: TinyModel
    swarm_seconds: float
    inner_steps: int  # diloco: local steps between outer rounds
    precision: str
    compile: bool
    gpu_step_args: list[str] = field(default_factory=list)
    gpu_step_timeout: float = 300.0
    offload_args: list[str] = field(default_factory=list)  # bench/offload_copies.py
    offload_timeout: float = 120.0


GPU_PLAN = Plan(
    device="cuda",
    # configs/demo.yaml's model (768 x 6, 24 heads, FFN 3072, generator 1/4) at seq 128 and micro-batch 64
    model=TinyModel(
        hidden_size=768, num_layers=6, num_heads=24, ffn_size=3072, seq_len=128, batch_size=64, target_batch_size=128
    ),
    swarm_seconds=180.0,
    inner_steps=100,
    precision="bf16",
    compile=True,
    gpu_step_args=["--device", "cuda", "--no-cpu"],  # the CPU row is measured on the dev machine (bench/README)
    offload_args=["--device", "cuda", "--size", "demo", "--steps", "5", "--batch", "32", "--seq", "128"],
)
DRY_PLAN = Plan(
    device="cpu",
    model=TinyModel(target_batch_size=8),  # 32 wide, 2 layers, seq 32, micro-batch 4
    swarm_seconds=10.0,
    inner_steps=5,
    precision="auto",  # fp32 on CPU
    compile=False,  # inductor's C++ build would take the dry run's whole minute
    gpu_step_args=["--cpu-only", "--cpu-steps", "2", "--cpu-warmup", "1"],
    gpu_step_timeout=120.0,
    offload_args=["--device", "cpu", "--size", "tiny", "--steps", "3", "--batch", "4", "--seq", "32"],
)


def peer_flags(plan: Plan) -> list[str]:
    """This peer's device, precision, compile and micro-batch. Through ``--set`` on the run config today; switch to
    ``--device cuda --precision bf16 --compile --batch_size auto`` once ``peer join`` has them (issue 22)."""
    return [
        "--set", f"train.device={plan.device}",
        "--set", f"train.precision={plan.precision}",
        "--set", f"train.compile={str(plan.compile).lower()}",
        "--set", f"train.batch_size={plan.model.batch_size}",
    ]  # fmt: skip


# -------------------------------------------------------------------------------------------------- samplers


class Sampler:
    """Polls ``probe()`` every ``every`` seconds on a thread until stopped; keeps every non-None result."""

    def __init__(self, probe, every: float) -> None:
        self.probe, self.every, self.samples = probe, every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                value = self.probe()
            except (OSError, ValueError):
                value = None
            if value is not None:
                self.samples.append(value)
            self._stop.wait(self.every)

    def stop(self) -> list:
        self._stop.set()
        self._thread.join(10)
        return self.samples


def tree_rss(pids: list[int]) -> int:
    """Resident memory of these processes and all their descendants (hivemind's DHT and averager forks, p2pd)."""
    import psutil

    total = 0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def shm_used() -> int:
    st = os.statvfs("/dev/shm")
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def nvidia_smi() -> str | None:
    return shutil.which("nvidia-smi")


def gpu_name() -> str | None:
    if not nvidia_smi():
        return None
    out = subprocess.run([nvidia_smi(), "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def smi_sample() -> tuple[float, float, float, float] | None:
    """(time, utilization.gpu %, memory.used MiB, memory.total MiB) of the first GPU, from one nvidia-smi call."""
    query = "--query-gpu=utilization.gpu,memory.used,memory.total"
    out = subprocess.run([nvidia_smi(), query, "--format=csv,noheader,nounits"], capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        return None
    util, used, total = (float(f) for f in out.stdout.strip().splitlines()[0].split(","))
    return time.time(), util, used, total


def gpu_figures(rows: list[tuple[float, float, float, float]], start: float, end: float) -> dict | None:
    """Utilisation while both peers trained ([start, end]); the memory peak over the whole swarm."""
    inside = [r for r in rows if start <= r[0] <= end] or rows
    if not inside:
        return None
    util = [r[1] for r in inside]
    return {
        "samples": len(inside),
        "utilisation_mean_pct": sum(util) / len(util),
        "utilisation_max_pct": max(util),
        "memory_peak_mib": max(r[2] for r in rows),
        "memory_total_mib": rows[0][3],
    }


# ------------------------------------------------------------------------------------------------------ parts


def run_gpu_step(plan: Plan, out: Path, tiny_config: Path | None) -> dict:
    """``bench/gpu_step.py`` as a child (its own CUDA context, freed before the swarm starts); its JSON or the error."""
    path = out / "gpu_step.json"
    argv = [sys.executable, str(ROOT / "bench" / "gpu_step.py"), *plan.gpu_step_args, "--json", str(path)]
    if tiny_config is not None:
        argv += ["--cpu-config", str(tiny_config)]
    env = {k: v for k, v in os.environ.items() if k != "OUT"}  # gpu_step also writes $OUT/gpu_step.json otherwise
    started = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=plan.gpu_step_timeout, env=env, cwd=ROOT)
        (out / "gpu_step.log").write_text(done.stdout + done.stderr)
        print(done.stdout, end="", flush=True)
        error = None if done.returncode == 0 else f"exit {done.returncode}: {done.stderr.strip()[-500:]}"
    except subprocess.TimeoutExpired as e:
        (out / "gpu_step.log").write_text(str(e.stdout or "") + str(e.stderr or ""))
        error = f"gpu_step.py ran past {plan.gpu_step_timeout:.0f} s"
    result = json.loads(path.read_text()) if path.exists() else {}
    return {**result, "seconds": time.monotonic() - started, "error": error}


def run_offload_copies(plan: Plan, out: Path) -> dict:
    """``bench/offload_copies.py`` as a child: sync mode's offloaded buffers (pinned or not) and its host <-> device
    copy times per global step; its JSON or the error."""
    path = out / "offload_copies.json"
    argv = [sys.executable, str(ROOT / "bench" / "offload_copies.py"), *plan.offload_args, "--json", str(path)]
    started = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=plan.offload_timeout, cwd=ROOT)
        (out / "offload_copies.log").write_text(done.stdout + done.stderr)
        print(done.stdout, end="", flush=True)
        error = None if done.returncode == 0 else f"exit {done.returncode}: {done.stderr.strip()[-500:]}"
    except subprocess.TimeoutExpired as e:
        (out / "offload_copies.log").write_text(str(e.stdout or "") + str(e.stderr or ""))
        error = f"offload_copies.py ran past {plan.offload_timeout:.0f} s"
    result = json.loads(path.read_text()) if path.exists() else {}
    return {**result, "seconds": time.monotonic() - started, "error": error}


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


# ------------------------------------------------------------------------------------------------------- main


def write(out: Path, report: dict) -> None:
    tmp = out / "gpu_check.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out / "gpu_check.json")


def summary(report: dict) -> list[str]:
    lines = []
    step = report.get("gpu_step") or {}
    for row in step.get("rows", []):
        lines.append(
            f"gpu_step {row['size']:>5} {row['device']}: ours {row.get('ours_seq_per_s') or 0:.1f} seq/s, "
            f"MFU {row.get('ours_mfu') or 0:.3f} (HF {row.get('hf_seq_per_s') or 0:.1f} seq/s, "
            f"MFU {row.get('hf_mfu') or 0:.3f})"
        )
    if step.get("error"):
        lines.append(f"gpu_step failed: {step['error']}")
    offload = report.get("offload_copies") or {}
    if offload.get("error"):
        lines.append(f"offload_copies failed: {offload['error']}")
    elif offload:
        lines.append(
            f"sync mode's offloaded buffers: all pinned {offload['all_pinned']} ({offload['offloaded_buffers']}); "
            f"per global step gradients D2H {offload['d2h_median_seconds'] * 1e3:.1f} ms "
            f"(pageable {offload['d2h_pageable_seconds'] * 1e3:.1f} ms), parameters H2D "
            f"{offload['h2d_median_seconds'] * 1e3:.1f} ms, {offload['bytes_each_way'] / 2**20:.0f} MiB each way"
        )
    swarm = report.get("swarm") or {}
    for peer in swarm.get("peers", []):
        lines.append(
            f"swarm {peer['name']}: {peer['samples_per_second'] or 0:.1f} samples/s "
            f"over {peer['window_seconds']:.0f} s, "
            f"compute utilisation {peer['compute_utilisation_pct']}%, global step {peer['global_step']}"
        )
    if swarm:
        mfu, rss, shm = report.get("swarm_mfu"), swarm["host_rss_peak_bytes"], swarm["dev_shm_peak_bytes"]
        lines.append(
            f"swarm total: {swarm['samples_per_second'] or 0:.1f} samples/s"
            + (f", MFU {mfu:.3f}" if mfu is not None else "")
            + (f", host RSS peak {rss / 2**30:.2f} GiB" if rss else "")
            + (f", /dev/shm peak +{shm / 2**30:.2f} GiB" if shm else "")
        )
        gpu = swarm.get("gpu")
        if gpu:
            lines.append(
                f"GPU: utilisation mean {gpu['utilisation_mean_pct']:.0f}% (max {gpu['utilisation_max_pct']:.0f}%), "
                f"memory peak {gpu['memory_peak_mib']:.0f} of {gpu['memory_total_mib']:.0f} MiB"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="output directory (gpu_check.json, gpu_step.json, logs)")
    p.add_argument("--dry-run", action="store_true", help="the same pipeline on the CPU at a tiny size")
    p.add_argument("--seconds", type=float, default=None, help="swarm training seconds (default 180; dry run 10)")
    p.add_argument(
        "--budget", type=float, default=450.0, help="GPU run: seconds for the whole run, the swarm shortened to fit"
    )
    args = p.parse_args(argv)
    plan = DRY_PLAN if args.dry_run else GPU_PLAN
    t0 = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.dry_run and gpu_name() is None:
        print(
            "error: no GPU (nvidia-smi finds none): run with --dry-run to check the pipeline on the CPU",
            file=sys.stderr,
        )
        return 2
    report: dict = {
        "dry_run": args.dry_run,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "host": {
            "python": platform.python_version(),
            "cpu_cores": os.cpu_count(),
            "gpu": gpu_name(),
            "load_average": os.getloadavg(),
        },  # fmt: skip
        "gpu_step": None,
        "offload_copies": None,
        "swarm": None,
        "swarm_mfu": None,
    }
    write(out, report)
    averaging = {"averaging": "diloco", "overlap_rounds": True, "inner_steps": plan.inner_steps}
    run = prepare_run(out / "run", "gpucheck", plan.model, averaging)  # its config and random-init step-0 state
    tiny = None
    if args.dry_run:  # gpu_step's CPU row at the dry run's size
        tiny = out / "dry-run.yaml"
        shutil.copyfile(run.config, tiny)
    report["gpu_step"] = run_gpu_step(plan, out, tiny)
    write(out, report)
    report["offload_copies"] = run_offload_copies(plan, out)
    write(out, report)

    seconds = args.seconds or plan.swarm_seconds
    if not args.dry_run:  # what the table left of the budget, less the peers' start (imports, CUDA, state) and exit
        seconds = max(min(seconds, args.budget - (time.monotonic() - t0) - 100.0), 30.0)
    report["swarm"] = swarm = run_swarm(plan, run, out, seconds)
    peak_key = "cpu_peak_flops" if plan.device == "cpu" else "gpu_peak_flops"
    peak = (report["gpu_step"] or {}).get(peak_key)
    if swarm["samples_per_second"] and peak:
        report["swarm_mfu"] = swarm["samples_per_second"] * swarm["flops_per_sequence"] / peak
    report["elapsed_seconds"] = time.monotonic() - t0
    write(out, report)
    for line in summary(report):
        print(line)
    print(f"wrote {out / 'gpu_check.json'} ({report['elapsed_seconds']:.0f} s)")
    ok = (
        report["gpu_step"]["error"] is None
        and report["offload_copies"]["error"] is None
        and all(p["exit_code"] == 0 for p in swarm["peers"])
    )
    return 0 if ok and swarm["samples_per_second"] else 1


if __name__ == "__main__":
    sys.exit(main())
