"""The swarm's overhead on one peer: ``peer join`` alone (diloco, rounds in the background) against ``peer train``,
the same model, data and micro-batch (issue 22: join must reach >= 90 % of train's samples/s).

Both are the real command lines, as subprocesses, on the demo config (MiniLM grown 2x wide, a 768x6 ELECTRA pair)
with every local step logged. Throughput is counted between step lines as this process receives them
(``PYTHONUNBUFFERED``), over steps ``--skip`` to ``--steps``: start-up (imports, growth, the DHT) and the first
steps (allocator warm-up) are not the steady state either pays per step. Both do the held-out evaluation every
``train.eval_every`` steps, as configured. The two alternate, ``--rounds`` times each (train, join, train, join,
...), so that a change in the machine's load during the run hits both alike; the figure is the ratio of the median
rates, with the range of the per-round ratios.

    nice -n 5 .venv/bin/python bench/join_overhead.py --rounds 3 --steps 60
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peer.children import ProcessSet  # noqa: E402 - standard library only: --help stays instant

TRAIN_STEP = re.compile(r"\bstep (\d+)\b.*\bloss\b")  # peer train: "step N | ... loss ..."
JOIN_STEP = re.compile(r"local step (\d+):")


def timed_steps(argv: list[str], pattern: re.Pattern, last: int, env: dict, log: Path) -> dict[int, float]:
    """Runs ``argv`` (``peer.children``, its output through a pipe, copied to ``log``); returns {step: time its line
    arrived}, up to step ``last``, then stops the process: SIGTERM (a peer leaves cleanly and stops its p2pd), up to
    120 s, then SIGKILL to everything left in its session."""
    seen: dict[int, float] = {}
    with ProcessSet(log.parent, grace=120) as procs, log.open("w") as out:
        child = procs.start(log.stem, argv, env=env, cwd=ROOT, pipe=True)
        for raw in child.proc.stdout:
            now = time.monotonic()
            line = raw.decode(errors="replace")
            out.write(line)
            found = pattern.search(line)
            if found and int(found.group(1)) not in seen:
                seen[int(found.group(1))] = now
                if int(found.group(1)) >= last:
                    break
    if last not in seen:
        raise SystemExit(f"{argv[2]} stopped before step {last}; see {log}")
    return seen


def rate(stamps: dict[int, float], first: int, last: int, samples_per_step: int) -> float:
    return (last - first) * samples_per_step / (stamps[last] - stamps[first])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=60, help="local steps per run")
    p.add_argument("--skip", type=int, default=10, help="steps not counted at the start of each run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=None, help="kept between runs: the grown model is reused")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "join_overhead.json")
    opts = p.parse_args()
    if not 0 <= opts.skip < opts.steps or opts.rounds < 1:
        p.error("want 0 <= --skip < --steps and --rounds >= 1")
    from peer.config import load_config

    cfg = load_config(opts.config)
    samples = cfg.train.batch_size * cfg.train.grad_accum
    work = opts.work or Path(tempfile.mkdtemp(prefix="join-overhead-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                        "OMP_NUM_THREADS": str(opts.threads), "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    common = ["--set", "train.log_every=1"]
    grown = work / "train" / "initial"
    rounds = []
    for r in range(opts.rounds):
        shutil.rmtree(work / "train" / "ckpt", ignore_errors=True)
        train = [sys.executable, "-m", "peer", "train", "-c", opts.config, *common,
                 "--set", f"train.out_dir={work / 'train'}", "--set", "train.checkpoint_every=1000000",
                 "--max_steps", str(opts.steps + 1), "--no_resume"]  # fmt: skip (+1: its last step saves)
        t = timed_steps(train, TRAIN_STEP, opts.steps, env, work / f"train{r}.log")
        join_dir = work / f"join{r}"
        join = [sys.executable, "-m", "peer", "join", "-c", opts.config, *common,
                "--set", "swarm.averaging=diloco", "--set", "swarm.overlap_rounds=true",
                "--host_maddrs", "/ip4/127.0.0.1/tcp/0", "--no_status", "--work_dir", str(join_dir),
                "--max_steps", str(opts.steps + 5)]  # fmt: skip
        if (grown / "config.json").is_file():
            join += ["--init_dir", str(grown)]
        j = timed_steps(join, JOIN_STEP, opts.steps, env, work / f"join{r}.log")
        shutil.rmtree(join_dir, ignore_errors=True)
        row = {"train": rate(t, opts.skip, opts.steps, samples), "join": rate(j, opts.skip, opts.steps, samples)}
        row["ratio"] = row["join"] / row["train"]
        rounds.append(row)
        print(f"round {r + 1}: train {row['train']:.2f} samples/s, join {row['join']:.2f} samples/s, "
              f"ratio {row['ratio']:.3f}", flush=True)  # fmt: skip
    med = {k: statistics.median(x[k] for x in rounds) for k in ("train", "join")}
    ratios = [x["ratio"] for x in rounds]
    report = {
        "config": opts.config,
        "model": f"{cfg.model.architecture} {cfg.model.hidden_size}x{cfg.model.num_layers} (grown from "
                 f"{cfg.growth.source})",  # fmt: skip
        "micro_batch": f"{cfg.train.batch_size} x {cfg.train.grad_accum} x seq {cfg.data.seq_len}",
        "join_mode": "diloco, overlap_rounds, alone",
        "steps_counted": f"{opts.skip}..{opts.steps}",
        "rounds": rounds,
        "median_samples_per_second": med,
        "ratio_of_medians": med["join"] / med["train"],
        "ratio_range": [min(ratios), max(ratios)],
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "threads": opts.threads,
                 "load_average_at_end": os.getloadavg()},  # fmt: skip
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(report, indent=1))
    print(f"join / train: {report['ratio_of_medians']:.3f} (per round {min(ratios):.3f}-{max(ratios):.3f}); "
          f"train {med['train']:.2f}, join {med['join']:.2f} samples/s (medians of {opts.rounds}); wrote {opts.out}")


if __name__ == "__main__":
    main()
