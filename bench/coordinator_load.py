"""Coordinator CPU and memory with N real peers: is the coordinator cheap enough to run for a month?

Starts a real coordinator (checkpoint 0 from a tiny random ELECTRA, so the peers' compute does not drown the
measurement on a small machine) and N real ``python -m peer join`` processes on loopback, then samples the
coordinator's process tree from /proc: CPU seconds per wall second and RSS of the main process and its children
(p2pd, averagers). Prints a table and the checkpoints saved. Everything is stopped and reaped at the end.

    .venv/bin/python bench/coordinator_load.py --peers 4 --seconds 120
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from peer.children import Child, ProcessSet  # noqa: E402
from peer.config import ModelSpec, config_to_dict, load_config  # noqa: E402
from peer.modeling import build_models, save_models  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(pid: int) -> list[int]:
    """pid and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_and_rss(pid: int) -> tuple[float, int]:
    """(user+system CPU seconds, RSS bytes) of one process; (0, 0) once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        rss_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0, 0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK, rss_pages * PAGE


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=120, help="measurement window after all peers train")
    parser.add_argument("--checkpoint_every", type=int, default=5)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ws-coordload-"))
    spec = ModelSpec(hidden_size=64, num_layers=2, num_heads=2, ffn_size=128, max_position_embeddings=128)
    cfg = load_config(ROOT / "configs" / "demo.yaml", ["run_id=coordload", "data.seq_len=32", "train.batch_size=8"])
    cfg.model = spec
    cfg.swarm.target_batch_size = 64
    (work / "run.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    from transformers import AutoTokenizer

    from peer.growth import resolve_source

    tokenizer = AutoTokenizer.from_pretrained(resolve_source(cfg.growth.source))
    save_models(build_models(spec, tokenizer.vocab_size, seed=0), work / "init", tokenizer)

    env = dict(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    http = free_port()

    # peer.children: each child in its own session, logging to work/<name>.log; leaving the set stops the peers,
    # then the coordinator (SIGTERM, 60 s, then SIGKILL to every process of their sessions)
    with ProcessSet(work, grace=60) as procs:

        def start(name: str, argv: list[str]) -> Child:
            return procs.start(name, [sys.executable, *argv], env=env, cwd=ROOT)

        coord = start(
            "coordinator",
            ["-m", "coordinator", "start", "-c", str(work / "run.yaml"), "--data_dir", str(work / "data"),
             "--host", "127.0.0.1", "--http_port", str(http), "--grpc_port", str(free_port()),
             "--dht_port", str(free_port()), "--init_from", str(work / "init"),
             "--checkpoint_every", str(args.checkpoint_every)],
        )  # fmt: skip
        url = f"http://127.0.0.1:{http}"
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/v1/run", timeout=2).read()
                break
            except OSError:
                if not coord.alive() or time.monotonic() > deadline:
                    raise SystemExit(f"coordinator did not start; see {work / 'coordinator.log'}") from None
                time.sleep(1)
        for i in range(args.peers):
            start(
                f"peer{i}",
                ["-m", "peer", "join", "--coordinator", url, "--no_status", "--peer_name", f"bench-{i}",
                 "--work_dir", str(work / f"peer{i}"), "--host_maddrs", "/ip4/127.0.0.1/tcp/0"],
            )  # fmt: skip
        # Wait until every peer trains (the coordinator sees them all alive), then measure.
        deadline = time.monotonic() + 300
        while True:
            progress = json.load(urllib.request.urlopen(f"{url}/api/v1/progress", timeout=5))
            if progress.get("alive_peers", 0) >= args.peers:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"only {progress.get('alive_peers')} of {args.peers} peers became alive")
            time.sleep(2)
        step0 = progress.get("global_step", 0)

        def sample() -> tuple[float, int, int]:
            pids = tree(coord.pid)
            stats = [cpu_and_rss(p) for p in pids]
            return sum(c for c, _ in stats), cpu_and_rss(coord.pid)[1], sum(r for _, r in stats)

        cpu0, _, _ = sample()
        t0 = time.monotonic()
        peak_main = peak_tree = 0
        rss_first = None
        while time.monotonic() - t0 < args.seconds:
            _, rss_main, rss_tree = sample()
            rss_first = rss_first or rss_main
            peak_main, peak_tree = max(peak_main, rss_main), max(peak_tree, rss_tree)
            time.sleep(1)
        cpu1, rss_last, _ = sample()
        wall = time.monotonic() - t0
        progress = json.load(urllib.request.urlopen(f"{url}/api/v1/progress", timeout=5))
        checkpoints = json.load(urllib.request.urlopen(f"{url}/api/v1/checkpoints", timeout=5))["checkpoints"]

    mib = 1 << 20
    print(f"\ncoordinator with {args.peers} peers, {wall:.0f} s window, global steps {step0} -> "
          f"{progress.get('global_step')}, checkpoints {[c['name'] for c in checkpoints]}")  # fmt: skip
    print("| metric | value |\n|---|---:|")
    print(f"| CPU, coordinator process tree (cores) | {(cpu1 - cpu0) / wall:.3f} |")
    print(f"| RSS main process, start -> end of window (MiB) | {rss_first / mib:.0f} -> {rss_last / mib:.0f} |")
    print(f"| RSS main process, peak (MiB) | {peak_main / mib:.0f} |")
    print(f"| RSS process tree incl. p2pd and averagers, peak (MiB) | {peak_tree / mib:.0f} |")
    print(f"logs: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
