"""Real coordinator and peer processes for fault injection: a tiny run, its coordinator and peers, and reading them.

Every scenario (and the soak, and the fast tests) needs a tiny run that starts in seconds on a loaded 2-core machine,
and children that can be SIGKILLed one at a time with nothing (a peer, its p2pd, a hivemind fork) outliving the
scenario even when it crashes or is interrupted. The children themselves are ``peer.children``'s: each in its own
session, reaped whole when the scenario's ``ProcessSet`` is left; here they are started with the scenarios' settings
(:func:`start_python`).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from peer.children import Child, ProcessSet

ROOT = Path(__file__).resolve().parents[2]

PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class TinyModel:
    """Sizes of a run small enough that a peer step is milliseconds: the faults, not the compute, are under test."""

    hidden_size: int = 32
    num_layers: int = 2
    num_heads: int = 2
    ffn_size: int = 64
    seq_len: int = 32
    batch_size: int = 4
    target_batch_size: int = 32


@dataclass(frozen=True)
class RunFiles:
    """A run config file and its step-0 model dir (``--init_from`` for the coordinator)."""

    run_id: str
    config: Path
    init_dir: Path


def prepare_run(root: Path, run_id: str, model: TinyModel = TinyModel(), swarm: dict | None = None) -> RunFiles:
    """Writes ``root/run.yaml`` and a random-init step-0 model in ``root/init`` (seed 0: every call is identical)."""
    from transformers import AutoTokenizer

    from peer.config import ModelSpec, config_to_dict, load_config
    from peer.growth import resolve_source
    from peer.modeling import build_models, save_models

    root.mkdir(parents=True, exist_ok=True)
    cfg = load_config(ROOT / "configs" / "demo.yaml", [f"run_id={run_id}"])
    cfg.model = ModelSpec(
        hidden_size=model.hidden_size,
        num_layers=model.num_layers,
        num_heads=model.num_heads,
        ffn_size=model.ffn_size,
        max_position_embeddings=max(64, model.seq_len),
    )
    cfg.data.seq_len = model.seq_len
    cfg.train.batch_size = model.batch_size
    cfg.train.warmup_steps = 2
    cfg.train.eval_every = 10**9  # evaluation only costs CPU here
    cfg.swarm.target_batch_size = model.target_batch_size
    cfg.swarm.matchmaking_time = 2.0
    cfg.swarm.averaging_timeout = 20.0
    for key, value in (swarm or {}).items():
        setattr(cfg.swarm, key, value)
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    init = root / "init"
    if not (init / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(resolve_source(cfg.growth.source))
        save_models(build_models(cfg.model, tokenizer.vocab_size, seed=0), init, tokenizer)
    return RunFiles(run_id=run_id, config=config, init_dir=init)


CHILD_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
}
"""Added to every child's environment: offline, one thread per process (several children share 2 cores), unbuffered
logs."""


def start_python(procs: ProcessSet, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
    """``python ARGV`` from the repository root with :data:`CHILD_ENV` (and ``env``), logging to
    ``procs.work/<name>.log``; it gets SIGTERM when this process dies, even by SIGKILL, so a killed bench run does not
    leave a swarm training in the background (SIGTERM lets a peer stop its p2pd)."""
    return procs.start(name, [sys.executable, *argv], env=CHILD_ENV | (env or {}), cwd=ROOT, die_with_parent=True)


def rss_bytes(pid: int) -> int:
    """Resident set size of one process; 0 once it is gone."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def anon_bytes(pid: int) -> int:
    """Anonymous resident memory (``RssAnon``) of one process; 0 once it is gone. Unlike RSS it excludes file pages
    (libraries, mmapped checkpoints), which the kernel may drop under pressure from other jobs: a leak shows here."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


@dataclass
class Coordinator:
    """Arguments and handle of one ``python -m coordinator start``; ``start`` may be called again after a kill
    (same data dir, same ports, same identity: a restart)."""

    procs: ProcessSet
    run: RunFiles
    data_dir: Path
    checkpoint_every: int = 5
    keep_last: int = 3
    monitor_interval: float = 1.0
    state_timeout: float = 60.0
    extra_args: list[str] = field(default_factory=list)  # e.g. ["--allowlist", FILE] for a private run
    host: str = "127.0.0.1"  # where it listens (HTTP, gRPC, DHT): e.g. a veth address that a netns peer reaches
    # the background evaluation of each checkpoint: off by default here, because a scenario measures how faults are
    # handled, and a worker fine-tuning on the same 2 cores (even at nice 19) only adds noise and time to that
    evaluate: bool = False
    export: bool = False  # the background exports likewise (start --export_forms none)
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    dht_port: int = field(default_factory=free_port)
    child: Child | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def start(self, timeout: float = 240.0) -> Child:
        self.child = start_python(
            self.procs,
            "coordinator",
            ["-m", "coordinator", "start", "-c", str(self.run.config), "--data_dir", str(self.data_dir),
             "--host", self.host, "--http_port", str(self.http_port), "--grpc_port", str(self.grpc_port),
             "--dht_port", str(self.dht_port), "--init_from", str(self.run.init_dir),
             "--checkpoint_every", str(self.checkpoint_every), "--keep_last", str(self.keep_last),
             "--monitor_interval", str(self.monitor_interval), "--state_timeout", str(self.state_timeout),
             *([] if self.evaluate else ["--no_eval"]), *([] if self.export else ["--export_forms", "none"]),
             *self.extra_args],
        )  # fmt: skip
        self.child.wait_until(
            lambda: self.get("/api/v1/run"), timeout, "no answer at /api/v1/run", retry_on=(OSError,), every=0.5
        )
        return self.child

    def get(self, path: str, timeout: float = 30.0, tries: int = 3) -> dict:
        """A JSON API call; a slow answer is retried (a coordinator busy pulling state on a loaded machine can take
        seconds), a refused connection is not (the caller polls for startup itself)."""
        for attempt in range(tries):
            try:
                with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
                    return json.load(response)
            except TimeoutError:
                if attempt == tries - 1:
                    raise
        raise AssertionError("unreachable")

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=30) as response:
            return response.read().decode()

    def counter(self, name: str, **labels: str) -> float:
        """One sample of the coordinator's Prometheus exposition (0 when the series does not exist yet)."""
        return read_sample(self.metrics_text(), name, labels)

    def progress(self) -> dict:
        return self.get("/api/v1/progress")

    def wait_for(self, what: str, predicate, timeout: float, every: float = 1.0) -> dict:
        """Polls ``/api/v1/progress`` until ``predicate(progress)``; raises with the log tail on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                progress = self.progress()
                if predicate(progress):
                    return progress
            except (OSError, ValueError):
                progress = {}
            if time.monotonic() > deadline:
                tail = self.child.tail() if self.child else ""
                raise TimeoutError(f"coordinator: {what} not reached in {timeout:.0f} s (last {progress}):\n{tail}")
            time.sleep(every)


def read_sample(exposition: str, name: str, labels: dict[str, str]) -> float:
    """The value of ``name{labels}`` in a Prometheus text exposition; labels must match exactly."""
    want = {k: str(v) for k, v in labels.items()}
    for line in exposition.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)", line)
        if not match or match.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if got == want:
            return float(match.group(3))
    return 0.0


def start_peer(
    procs: ProcessSet, name: str, coordinator: Coordinator, *extra: str, debug_averaging: bool = False
) -> Child:
    """``python -m peer join --coordinator URL`` with its own work dir and identity (a fresh identity per name).
    ``debug_averaging`` turns on hivemind's DEBUG log, whose optimizer lines ("Beginning optimizer step #N",
    "Transitioning to epoch N") tell a scenario when a peer is inside an averaging round."""
    work = procs.work / name
    env = {"HIVEMIND_LOGLEVEL": "DEBUG", "GOLOG_LOG_LEVEL": "info"} if debug_averaging else None  # not p2pd
    return start_python(
        procs,
        name,
        ["-m", "peer", "join", "--coordinator", coordinator.url, "--no_status", "--peer_name", name,
         "--work_dir", str(work), "--identity_path", str(procs.work / f"{name}.id"),
         "--host_maddrs", "/ip4/127.0.0.1/tcp/0", *extra],
        env=env,
    )  # fmt: skip


TRAINING = re.compile(r"starting at global step (\d+)")
PEER_ID = re.compile(r"DHT started, peer id (\w+)")


class LogFollower:
    """Reads a child's log incrementally (peers log at DEBUG in some scenarios: re-reading whole files would cost
    more CPU than the peers)."""

    def __init__(self, path: Path, from_end: bool = True):
        self.path = path
        self.offset = path.stat().st_size if from_end and path.exists() else 0
        self.pending = ""

    def new_lines(self) -> list[str]:
        try:
            with open(self.path, errors="replace") as f:
                f.seek(self.offset)
                chunk = f.read()
                self.offset = f.tell()
        except OSError:
            return []
        text = self.pending + chunk
        *lines, self.pending = text.split("\n")
        return lines


# ``peer.logs``' format (hivemind's records go through it too: ``2026-12-06 17:27:28 DEBUG hivemind.optim...``, whole
# seconds), and hivemind's own (``Dec 06 17:27:28.123 [DEBUG] ...``, no year), which processes started without
# ``peer.logs`` still write.
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:[.,]\d{3})?) \w+ ")
HIVEMIND_TIME = re.compile(r"^(\w{3} +\d{1,2} \d\d:\d\d:\d\d\.\d{3}) \[\w+\] ")


def log_timestamp(line: str, year: int | None = None) -> float | None:
    """The Unix time of a log line of a peer or coordinator (local time), or None for a line without a time."""
    import datetime

    match = LOG_TIME.match(line)
    if match:
        return datetime.datetime.fromisoformat(match.group(1).replace(",", ".")).timestamp()
    match = HIVEMIND_TIME.match(line)
    if not match:
        return None
    year = year or datetime.datetime.now().year
    return datetime.datetime.strptime(f"{year} {match.group(1)}", "%Y %b %d %H:%M:%S.%f").timestamp()
