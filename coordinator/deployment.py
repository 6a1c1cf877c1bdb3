"""Where and how one coordinator runs, as opposed to what the run is.

Settings that belong to one deployment rather than to the run (where data lives, what it listens on, cadence of
checkpoints, how many to keep) are a ``CoordinatorSpec`` filled from command-line flags; the run itself is the
``RunConfig`` every peer receives.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class EvaluationSettings:
    """The coordinator's background evaluation of each new checkpoint (``coordinator.evaluator``): which tasks, how
    many seeds and fine-tuning steps, and how gently it runs. Defaults are sized for the demo model on a shared
    2-core CPU: the checkpoint alone, no references (checkpoint 0 is the source model grown function-preservingly,
    so the first point of each score's history is the source's score), 2 seeds (an sd), 20 steps, 4 held-out
    batches, one torch thread at nice 19, so training and serving keep the other core and win every contest for
    this one. ``python -m coordinator evaluate`` gives the full comparison with references."""

    enabled: bool = True
    tasks: tuple[str, ...] = ()  # empty: every task of coordinator.evaluation
    seeds: int = 2
    steps: int = 20
    batch_size: int = 16
    max_length: int = 96
    train_layers: int = 1
    heldout_batches: int = 4
    max_attempts: int = 3  # failed evaluations of one checkpoint before it is given up (kept across restarts)
    niceness: int = 19  # added to the evaluation process's nice value
    threads: int = 1  # torch threads of the evaluation process
    timeout: float = 4 * 3600.0  # seconds one evaluation may take before it counts as failed
    poll_interval: float = 5.0  # seconds between looks for a new checkpoint


CHEAP_EXPORT_FORMS = ("bf16", "int8")  # seconds each on a CPU; the default forms built of every checkpoint


@dataclass
class ExportSettings:
    """The forms the coordinator builds of each checkpoint in the background (``coordinator.export.background``) and
    how gently. Default: the cheap forms, bf16 and int8 (a copy in another dtype, seconds each); pruned and distilled
    read the corpus and train, bert2bert doubles the model, so they are built only when named. No forms: none built.
    Like the evaluation: one process at a time, at nice 19 with one torch thread, newest checkpoint first."""

    forms: tuple[str, ...] = CHEAP_EXPORT_FORMS
    fraction: float = 0.25  # pruned: share of attention heads removed
    steps: int = 200  # distilled: training steps of the student
    max_attempts: int = 3  # failed builds of one form of one checkpoint before it is given up (kept across restarts)
    niceness: int = 19
    threads: int = 1
    timeout: float = 2 * 3600.0  # seconds one checkpoint's forms may take before the worker counts as failed
    poll_interval: float = 5.0


@dataclass
class CoordinatorSpec:
    """One coordinator deployment: where it keeps its data, what it listens on, how often it checkpoints."""

    data_dir: Path
    host: str = "0.0.0.0"
    http_port: int = 8080
    grpc_port: int = 50051
    dht_port: int = 31337
    identity_path: Path | None = None  # default: <data_dir>/dht_identity.key
    public_host: str | None = None  # the address volunteers use to reach this machine (default: guessed)
    checkpoint_every: int = 100  # global steps between checkpoints
    keep_last: int = 3
    alive_window: float = 60.0
    monitor_interval: float = 5.0
    state_timeout: float = 300.0  # how long one pull of the averaged state from the peers may take
    init_from: Path | None = None  # an existing model dir to use as checkpoint 0 instead of growing one
    allowlist: Path | None = None  # a private run: only volunteers in this file get access tokens (None: open run)
    token_ttl: float = 3600.0  # seconds an access token stays valid (peers renew at a quarter left)
    extra_join_args: list[str] = field(default_factory=list)
    # this coordinator's own DHT node, like a peer's PeerSettings (not the run's, so not in the published config)
    initial_peers: list[str] = field(default_factory=list)  # other nodes of the swarm to bootstrap from
    use_relay: bool = True
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    exports: ExportSettings = field(default_factory=ExportSettings)


def listen_ports(spec: CoordinatorSpec) -> dict[str, int]:
    """The ports the coordinator's servers listen on, by the flag that sets each (0: any free port)."""
    return {"--http_port": spec.http_port, "--grpc_port": spec.grpc_port, "--dht_port": spec.dht_port}


def guess_public_host() -> str:
    """The address other machines most likely reach this one at (the source address of the default route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent, only a route is chosen
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def public_host_of(spec: CoordinatorSpec) -> str:
    """The address volunteers reach this coordinator at: ``--public_host``, else ``--host`` unless it is a wildcard,
    else the guess."""
    return spec.public_host or (spec.host if spec.host not in ("0.0.0.0", "::") else guess_public_host())
