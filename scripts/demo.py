"""The embedded default run on one machine: a coordinator and two volunteer peers, all offline.

Why a supervisor script rather than three terminals: a newcomer should see the whole system work with one command
and stop it with one Ctrl-C, with no daemon left behind. Each child runs in its own process group so that a signal
reaches its p2pd daemons too; the supervisor forwards SIGINT, waits, then escalates.

A peer that exits (or is killed: try ``kill -9`` on a pid the demo prints) is what a swarm is built for: the demo
says so in one line and goes on with the others; it stops when the coordinator or the last peer is gone. The
children's output is log lines (their stdout is a pipe, so they draw no progress bars): one format, with dates, and
a traceback only for an unexpected error unless ``--verbose``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from peer.children import Child, ChildExited, ProcessSet  # noqa: E402

COLORS = {"coordinator": "\033[36m", "peer-1": "\033[32m", "peer-2": "\033[33m"}
RESET = "\033[0m"


def _pump(name: str, child: Child, color: bool) -> None:
    """Prefixes a child's output. Progress bars redraw with \\r and no newline, so their latest state is shown
    at most every few seconds instead of being lost until the next newline."""
    prefix = f"{COLORS.get(name, '')}[{name}]{RESET} " if color else f"[{name}] "
    fd = child.proc.stdout.fileno()
    pending, last_bar = b"", 0.0
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        pending += chunk
        *complete, pending = pending.replace(b"\r\n", b"\n").split(b"\n")
        for raw in complete:
            line = raw.decode(errors="replace").split("\r")[-1].rstrip()
            if line:
                sys.stdout.write(prefix + line + "\n")
        if b"\r" in pending and time.monotonic() - last_bar > 5:
            line = pending.decode(errors="replace").rstrip("\r").split("\r")[-1].rstrip()
            if line:
                sys.stdout.write(prefix + line + "\n")
                last_bar = time.monotonic()
            pending = pending[pending.rfind(b"\r") + 1 :] if not pending.endswith(b"\r") else b""
        sys.stdout.flush()


def _start(
    procs: ProcessSet, name: str, args: list[str], env: dict, color: bool, pumps: list[threading.Thread]
) -> Child:
    """Starts ``python ARGS`` in its own session, its output pumped with a ``[name]`` prefix by a thread added to
    ``pumps``, and says its pid."""
    child = procs.start(name, [sys.executable, *args], env=env, cwd=ROOT, pipe=True)
    pump = threading.Thread(target=_pump, args=(name, child, color), daemon=True)
    pump.start()
    pumps.append(pump)
    print(f"started {name} (pid {child.pid})", flush=True)
    return child


def _check_free(port: int, what: str) -> None:
    """Fails fast when a port is taken: otherwise the peers may join another coordinator already listening there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            hint = f"pick another with --{what}_port"
            raise SystemExit(f"error: {what} port {port} is in use (another coordinator?); {hint}") from None


def _wait_http(url: str, coordinator: Child, timeout: float) -> dict:
    def answer() -> dict:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.load(response)

    try:
        return coordinator.wait_until(answer, timeout, "not ready", retry_on=(OSError,), every=0.5)
    except ChildExited:
        code = coordinator.proc.returncode
        raise SystemExit(f"error: the coordinator exited with code {code} before it was ready") from None
    except TimeoutError:
        raise SystemExit(f"error: the coordinator did not answer at {url} within {timeout:.0f} s") from None


STOP_GRACE_S = 90.0
"""How long a peer has to leave after SIGINT: it finishes its step, which in the demo's sync mode can be an averaging
round that waits out ``averaging_timeout`` (30 s in configs/demo.yaml) when its partner is gone, then shuts down its
averagers (hivemind gives each 5 s). At 30 s, a demo run that ended mid-round killed a peer (2026-12-07), and a
SIGKILLed peer leaves its shared tensors in /dev/shm (peer.shm_leftovers)."""


def _stop(procs: ProcessSet) -> None:
    """SIGINT to every child (the last started first: peers leave the DHT before the coordinator goes), then SIGKILL
    to every process left in each child's session. Only the Python process gets SIGINT: it stops its own p2pd daemon
    on the way out, which it cannot do if the daemon was killed under it."""
    for child in procs.close():  # e.g. a peer still in an averaging round with a peer that is gone
        print(f"{child.name} did not stop within {procs.grace:.0f} s of SIGINT: killing it", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description="Run the embedded demo: a coordinator and 2 local peers.")
    parser.add_argument("-c", "--config", default=str(ROOT / "configs" / "demo.yaml"), help="run config (YAML)")
    parser.add_argument("--data_dir", default=str(ROOT / "runs" / "demo"), help="coordinator state and checkpoints")
    parser.add_argument("--http_port", type=int, default=8080, help="dashboard / API port")
    parser.add_argument("--grpc_port", type=int, default=50051, help="gRPC port")
    parser.add_argument("--dht_port", type=int, default=31337, help="coordinator DHT port")
    parser.add_argument("--checkpoint_every", type=int, default=5, help="global steps between checkpoints")
    parser.add_argument("--peers", type=int, default=2, help="number of local volunteer peers")
    parser.add_argument("--duration", type=float, default=0, help="stop by itself after this many seconds (0 = never)")
    parser.add_argument("--init_from", default=None, help="coordinator: this model dir as checkpoint 0, not grown")
    parser.add_argument("-v", "--verbose", action="store_true", help="children log debug lines and full tracebacks")
    args = parser.parse_args()

    for port, what in ((args.http_port, "http"), (args.grpc_port, "grpc"), (args.dht_port, "dht")):
        _check_free(port, what)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("OMP_NUM_THREADS", "1")  # 2 peers + coordinator share a small machine
    env["PYTHONUNBUFFERED"] = "1"
    color = sys.stdout.isatty()
    url = f"http://127.0.0.1:{args.http_port}"
    procs = ProcessSet(Path(args.data_dir), grace=STOP_GRACE_S, stop_signal=signal.SIGINT)
    children: dict[str, Child] = {}
    pumps: list[threading.Thread] = []
    stopping = threading.Event()
    verbose = ["--verbose"] if args.verbose else []
    init_from = ["--init_from", args.init_from] if args.init_from else []

    def on_signal(signum, frame):
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    try:
        children["coordinator"] = _start(
            procs,
            "coordinator",
            [
                "-m",
                "coordinator",
                *verbose,
                "start",
                "-c",
                args.config,
                "--data_dir",
                args.data_dir,
                "--host",
                "127.0.0.1",
                "--http_port",
                str(args.http_port),
                "--grpc_port",
                str(args.grpc_port),
                "--dht_port",
                str(args.dht_port),
                "--checkpoint_every",
                str(args.checkpoint_every),
                *init_from,
            ],
            env,
            color,
            pumps,
        )
        _wait_http(f"{url}/api/v1/run", children["coordinator"], timeout=300)
        for i in range(1, args.peers + 1):
            children[f"peer-{i}"] = _start(
                procs,
                f"peer-{i}",
                [
                    "-m",
                    "peer",
                    *verbose,
                    "join",
                    "--coordinator",
                    url,
                    "--identity_path",
                    str(Path(args.data_dir) / f"peer{i}.id"),
                    "--host_maddrs",
                    "/ip4/127.0.0.1/tcp/0",
                    "--work_dir",
                    str(Path(args.data_dir) / f"peer{i}"),
                    "--peer_name",
                    f"demo-peer-{i}",
                ],
                env,
                color,
                pumps,
            )
        print(f"\n  dashboard: {url}/    metrics: {url}/metrics    Ctrl-C stops everything\n", flush=True)
        gone: set[str] = set()
        while not stopping.is_set():
            if args.duration and time.monotonic() - started > args.duration:
                break
            for name in sorted(n for n, c in children.items() if not c.alive() and n not in gone):
                gone.add(name)
                going_on = "" if name == "coordinator" else "; the other peers go on without it"
                print(f"{name} exited with code {children[name].proc.returncode}{going_on}", flush=True)
            if "coordinator" in gone:
                print("error: the coordinator is gone; stopping the demo", flush=True)
                return 1
            if gone >= set(children) - {"coordinator"}:
                print("error: every peer is gone; stopping the demo", flush=True)
                return 1
            time.sleep(0.5)
    finally:
        when = f"each finishes its step, up to {STOP_GRACE_S:.0f} s"
        print(f"stopping: peers first ({when}), then the coordinator ...", flush=True)
        _stop(procs)
        for pump in pumps:  # the children's last lines (a peer's summary, any error) are shown before ours
            pump.join(timeout=10)
    checkpoints = sorted(p.name for p in (Path(args.data_dir) / "checkpoints").glob("ckpt-*") if p.is_dir())
    print(
        f"demo stopped after {time.monotonic() - started:.0f} s; state kept in {args.data_dir}; "
        f"checkpoints: {', '.join(checkpoints) or 'none'}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
