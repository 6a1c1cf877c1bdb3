"""``python -m coordinator start``: wires store, checkpoints, DHT, monitor, checkpoint saver and the HTTP/gRPC servers.

Start order (each step needs the ones before it), stopped in reverse on SIGINT/SIGTERM:
  0. refusals that write nothing: an unusable ``--data_dir``, a busy port or ``--host`` (``coordinator.preflight``),
     an ``--init_from`` that is no model dir, a missing or malformed allowlist; then the data dir's lock, before any
     slow work;
  1. store (SQLite, the run's history survives restarts), the signing keys (and a private run's token authority)
     and checkpoint recovery (drop ``*.tmp``, re-verify);
  2. checkpoint 0 from the growth recipe if the run has no checkpoint yet (or from ``--init_from``);
  3. the DHT node: persistent identity (stable peer id, so the join line survives a restart) and fixed port;
     the run config published under ``<run_id>_config``, signed with the coordinator's persistent RSA key;
  4. the monitor thread (DHT metrics -> store); the saver runs in the caller's (main) thread inside ``wait``: every
     ``checkpoint_every`` global steps it pulls the averaged state from the peers and saves a checkpoint (hivemind
     averagers must be started from the main thread: they install signal handlers);
  5. the HTTP and gRPC servers, then the line a volunteer copies to join.

Coordinator settings that belong to one deployment rather than to the run (where data lives, cadence of
checkpoints, how many to keep) are a ``CoordinatorSpec`` filled from command-line flags; the run itself is the
``RunConfig`` every peer receives.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import hivemind
from hivemind.dht.validation import RecordValidatorBase
from hivemind.utils import get_dht_time
from hivemind.utils.auth import AuthorizerBase

from coordinator.allowlist import Allowlist
from coordinator.api.grpc_server import start_grpc_server
from coordinator.api.http import RunInfo, create_http_app, start_http_server
from coordinator.auth import PrivateRun
from coordinator.bans import BanCourt, ban_authority_info
from coordinator.checkpoints import CheckpointDir, sync_store
from coordinator.metrics import CoordinatorMetrics
from coordinator.monitor import Monitor, make_validators
from coordinator.preflight import refuse_early
from coordinator.signing_key import load_or_create_signing_key
from coordinator.store import Store
from peer.config import RunConfig, config_to_dict
from peer.errors import UserError
from peer.lifetime import ProcessLock
from peer.run.checkpoint_layout import TRAINING_STATE_FILE
from peer.run.records import config_key
from peer.swarm.dht import READY_GRACE_S, run_dht

logger = logging.getLogger(__name__)

DB_NAME = "coordinator.db"
CHECKPOINTS_SUBDIR = "checkpoints"
SIGNING_KEY_NAME = "coordinator_signing_key.der"
IDENTITY_NAME = "dht_identity.key"
CONFIG_RECORD_TTL = 3600.0
KNOWN_PEERS_NAME = "known_peers.json"
KNOWN_PEERS_MAX = 64
DHT_STARTUP_TIMEOUT_S = 15.0  # p2pd start-up and bootstrap (hivemind's default)
CARRIED_FILES = ("growth.json",)  # provenance files copied from the previous checkpoint into each new one


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


def guess_public_host() -> str:
    """The address other machines most likely reach this one at (the source address of the default route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent, only a route is chosen
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def grow_initial_state(cfg: RunConfig, out_dir: Path) -> None:
    """Writes checkpoint 0's model files with the growth recipe (``peer.growth``) into ``out_dir``.

    The growth writes into a fresh subdirectory first (it keeps its own temp dir beside its target, which must stay
    inside our ``*.tmp`` checkpoint dir so that a crash leaves nothing in the checkpoints root) and is moved up."""
    from peer.growth.artifact import grow_run_initial_state

    grown = out_dir / "grown"
    grow_run_initial_state(cfg, grown)
    for item in sorted(grown.iterdir()):
        item.rename(out_dir / item.name)
    grown.rmdir()


def copy_model_dir(src: Path) -> Callable[[Path], None]:
    """A checkpoint writer that copies an existing model dir (its own manifest/training state excluded)."""
    if not (src / "config.json").is_file():
        raise UserError(f"--init_from {src} is not a model dir (no config.json)")

    def write(out: Path) -> None:
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src)
            if path.is_dir() or rel.as_posix() in ("manifest.json", TRAINING_STATE_FILE):
                continue
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out / rel)

    return write


class CheckpointSaver:
    """Every ``checkpoint_every`` global steps, pulls the swarm's state (``load_state_from_swarm``: parameters,
    optimizer state, DiLoCo outer momentum, step) into a model loaded from the latest checkpoint and saves it as a
    new checkpoint: the HF model dir plus ``optimizer.safetensors`` and the resume fields of ``training_state.json``,
    so a swarm that every peer left resumes from it with its Adam moments, not only its weights.

    The latest checkpoint is the template because it holds exactly the run's architecture and tokenizer; pulling
    into it also means a failed pull leaves nothing half-updated on disk."""

    def __init__(self, cfg: RunConfig, spec: CoordinatorSpec, dht: hivemind.DHT, store: Store, ckpts: CheckpointDir):
        self.cfg, self.spec, self.dht, self.store, self.ckpts = cfg, spec, dht, store, ckpts

    def due(self) -> bool:
        latest = self.ckpts.latest()
        last = latest.step if latest is not None else 0
        return self.store.progress().global_step >= last + self.spec.checkpoint_every

    def save_from_swarm(self, stop: threading.Event | None = None) -> int | None:
        """One pull-and-save; returns the saved step, or None if no peer answered, the state is not newer, or
        ``stop`` was set during the pull (Ctrl-C must not wait for a download that may never end)."""
        from transformers import AutoTokenizer

        from peer.modeling import load_models, save_models
        from peer.run.state_format import checkpoint_training_state, write_optimizer_file
        from peer.swarm.state import load_state_from_swarm

        latest = self.ckpts.latest()
        if latest is None:
            raise UserError("no checkpoint to use as the template for the swarm's state")
        template = self.ckpts.path(latest.name)
        models = load_models(template)
        logger.info("pulling the swarm's state for a checkpoint (at most %.0f s)", self.spec.state_timeout)
        state = load_state_from_swarm(self.dht, self.cfg, models, timeout=self.spec.state_timeout, stop=stop)
        if state is None:
            if stop is not None and stop.is_set():
                logger.info("stopping: abandoned the pull of the swarm's state")
            else:
                logger.warning("no peer sent its state within %.0f s; will retry", self.spec.state_timeout)
            return None
        if state.step <= latest.step:
            logger.info("swarm state is at step %d, not newer than checkpoint %s", state.step, latest.name)
            return None
        tokenizer = AutoTokenizer.from_pretrained(template)

        def write(out: Path) -> None:
            save_models(models, out, tokenizer)
            write_optimizer_file(state, out)
            for name in CARRIED_FILES:
                if (template / name).is_file():
                    shutil.copyfile(template / name, out / name)

        samples = self.store.progress().samples_total
        training_state = {"samples": samples, "run_id": self.cfg.run_id, **checkpoint_training_state(state)}
        self.ckpts.save(state.step, write, training_state, store=self.store)
        return state.step


@contextmanager
def _sigint_handler_kept() -> Iterator[None]:
    """hivemind's averager sets SIGINT to "ignore" in the process that starts it; put our handler back after."""
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if main and handler is not None:
            signal.signal(signal.SIGINT, handler)


@dataclass
class RunningCoordinator:
    """Handles to everything ``start_coordinator`` started; ``stop()`` ends them in reverse order."""

    cfg: RunConfig
    spec: CoordinatorSpec
    store: Store
    ckpts: CheckpointDir
    dht: hivemind.DHT
    http_port: int
    grpc_port: int
    public_host: str
    initial_peers: list[str]
    join_command: str
    signing_public_key: bytes
    saver: CheckpointSaver
    _stop: threading.Event
    _threads: list[threading.Thread]
    _stoppers: list[Callable[[], None]]
    private: PrivateRun | None = None  # the allowlist and token authority of a private run

    def reload_allowlist(self) -> None:
        """Re-reads the allowlist now (SIGHUP); it is also re-read on its own whenever the file changes."""
        if self.private is not None:
            self.private.authority.allowlist.reload()

    def wait(self, stop: threading.Event) -> None:
        """Runs the checkpoint saver and refreshes the published config record until ``stop`` is set. Call it from
        the main thread (see the module docstring); a state pull in progress finishes before it returns."""
        next_publish = time.monotonic() + CONFIG_RECORD_TTL / 4
        while not stop.wait(self.spec.monitor_interval):
            # every turn, so also just before a checkpoint pull: a coordinator killed inside a save must find the
            # peers it pulled from on restart (they dropped it from their routing tables and never dial it again)
            try:
                save_known_peers(self.dht, Path(self.spec.data_dir))
            except Exception:
                logger.exception("could not record the connected peers")
            if time.monotonic() >= next_publish:
                publish_config(self.dht, self.cfg, self.signing_public_key)
                next_publish = time.monotonic() + CONFIG_RECORD_TTL / 4
            try:
                if self.saver.due():
                    with _sigint_handler_kept():
                        self.saver.save_from_swarm(stop)
            except Exception:
                logger.exception("checkpoint from the swarm failed; will retry")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30.0)
        try:
            save_known_peers(self.dht, Path(self.spec.data_dir))
        except Exception:
            logger.exception("could not record the connected peers")
        _run_all(self._stoppers)
        # hivemind children (a state averager, a DHT that missed its grace period) must not keep us alive: the
        # interpreter would wait for them at exit while holding the data dir lock.
        for child in multiprocessing.active_children():
            logger.warning("terminating leftover child process %s (pid %s)", child.name, child.pid)
            child.terminate()
            child.join(5.0)


def publish_config(dht: hivemind.DHT, cfg: RunConfig, subkey: bytes) -> bool:
    """Stores the run config under ``<run_id>_config`` with the coordinator's public key as subkey: the DHT's
    ``RSASignatureValidator`` signs it, so only this coordinator can write or replace it."""
    return bool(
        dht.store(config_key(cfg.run_id), config_to_dict(cfg), get_dht_time() + CONFIG_RECORD_TTL, subkey=subkey)
    )


def lock_data_dir(data: Path) -> Callable[[], None]:
    """Takes the data dir's exclusive lock (one coordinator, one writer per data dir); returns its release. The lock
    of a coordinator that was killed is taken over (``ProcessLock``), so the same command starts again."""
    return ProcessLock(data / ".lock", f"data dir {data} is in use by another running coordinator").acquire().release


def start_coordinator_dht(
    cfg: RunConfig,
    spec: CoordinatorSpec,
    validators: Sequence[RecordValidatorBase],
    authorizer: AuthorizerBase | None = None,
) -> hivemind.DHT:
    """The coordinator's DHT node on a fixed port with a persistent identity (the peer id in the join line stays
    the same across restarts). It bootstraps from ``spec.initial_peers`` and from the peers it was connected to
    before a restart (``known_peers.json``): peers that joined through the coordinator know no one else to dial, so
    after a restart the coordinator must dial them, or it would sit alone beside a running swarm."""
    identity = spec.identity_path or Path(spec.data_dir) / IDENTITY_NAME
    known = read_known_peers(Path(spec.data_dir))
    attempts = [list(spec.initial_peers) + known] + ([list(spec.initial_peers)] if known else [])
    for i, initial_peers in enumerate(attempts):
        try:
            kwargs = dict(
                initial_peers=initial_peers or None,
                host_maddrs=_dht_maddrs(spec.host, spec.dht_port),
                announce_maddrs=_dht_maddrs(spec.public_host, spec.dht_port) if spec.public_host else None,
                identity_path=str(identity),
                use_relay=spec.use_relay,
                record_validators=list(validators),
                authorizer=authorizer,  # a private run: tokens on every DHT message, ours signed by ourselves
                startup_timeout=DHT_STARTUP_TIMEOUT_S,
                start=False,
            )
            return run_dht(partial(hivemind.DHT, **kwargs), DHT_STARTUP_TIMEOUT_S + READY_GRACE_S)
        except UserError:  # the DHT process died or hung: no other bootstrap list would help
            raise
        except Exception as e:  # hivemind re-raises the p2pd child's errors with their own types
            text = " ".join(str(e).split())[:300] or type(e).__name__
            if i + 1 < len(attempts):
                logger.warning(
                    "none of the %d previously known peers answered (%s); starting without them", len(known), text
                )
                continue
            raise UserError(f"could not start the DHT on {spec.host}:{spec.dht_port}: {text}") from None
    raise AssertionError("unreachable")


async def _connected_peer_maddrs(dht: hivemind.DHT, node) -> list[str]:
    """Runs inside the DHT process: full multiaddrs (with /p2p/<id>) of the peers the node is connected to."""
    infos = await node.p2p.list_peers()
    return [f"{addr}/p2p/{info.peer_id}" for info in infos for addr in info.addrs if "/p2p-circuit" not in str(addr)]


def save_known_peers(dht: hivemind.DHT, data_dir: Path) -> int:
    """Remembers the currently connected peers for the next start (the file is rewritten only when they changed, so
    calling it every few seconds costs one query to the DHT process); returns how many addresses it holds."""
    maddrs = sorted(set(dht.run_coroutine(_connected_peer_maddrs)))
    path, text = data_dir / KNOWN_PEERS_NAME, json.dumps(maddrs, indent=1)
    if maddrs and (not path.is_file() or path.read_text() != text):
        tmp = data_dir / (KNOWN_PEERS_NAME + ".tmp")
        tmp.write_text(text)
        tmp.replace(data_dir / KNOWN_PEERS_NAME)
    return len(maddrs)


def read_known_peers(data_dir: Path) -> list[str]:
    try:
        maddrs = json.loads((data_dir / KNOWN_PEERS_NAME).read_text())
    except (OSError, ValueError):
        return []
    return [m for m in maddrs if isinstance(m, str)][:KNOWN_PEERS_MAX] if isinstance(maddrs, list) else []


def listen_ports(spec: CoordinatorSpec) -> dict[str, int]:
    """The ports the coordinator's servers listen on, by the flag that sets each (0: any free port)."""
    return {"--http_port": spec.http_port, "--grpc_port": spec.grpc_port, "--dht_port": spec.dht_port}


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _dht_maddrs(host: str, port: int) -> list[str]:
    return [f"/ip6/{host}/tcp/{port}"] if ":" in host else [f"/ip4/{host}/tcp/{port}"]


def start_coordinator(
    cfg: RunConfig, spec: CoordinatorSpec, initial_state: Callable[[RunConfig, Path], None] = grow_initial_state
) -> RunningCoordinator:
    """Starts everything (see the module docstring) and returns once the servers accept connections."""
    # Bad input is refused before anything is written or grown (see coordinator.preflight).
    data = Path(spec.data_dir)
    refuse_early(data, spec.host, listen_ports(spec))
    writer = copy_model_dir(spec.init_from) if spec.init_from else (lambda d: initial_state(cfg, d))
    if spec.allowlist is not None:
        Allowlist(spec.allowlist)  # read now: a missing or malformed allowlist is refused before any write
    stoppers: list[Callable[[], None]] = []
    stop = threading.Event()
    try:
        data.mkdir(parents=True, exist_ok=True)
        stoppers.append(lock_data_dir(data))
        store = Store(data / DB_NAME, alive_window=spec.alive_window)
        stoppers.append(store.close)
        store.open_run(cfg.run_id, config_to_dict(cfg), total_steps=cfg.train.total_steps)
        signing_key = load_or_create_signing_key(data / SIGNING_KEY_NAME)
        private = PrivateRun.open(cfg.run_id, spec.allowlist, data, store, spec.token_ttl) if spec.allowlist else None

        ckpts = CheckpointDir(data / CHECKPOINTS_SUBDIR, keep_last=spec.keep_last)
        report = ckpts.recover()
        for name in report.removed_tmp:
            logger.warning("removed an interrupted checkpoint write: %s", name)
        for message in report.corrupt:
            logger.error("corrupt checkpoint set aside: %s", message)
        sync_store(store, report.verified)
        if not report.verified:
            logger.info("creating checkpoint 0 (%s)", f"from {spec.init_from}" if spec.init_from else "growth")
            ckpts.save(0, writer, {"samples": 0, "run_id": cfg.run_id}, store=store)

        signature, validators = make_validators(cfg.run_id, signing_key)
        dht = start_coordinator_dht(
            cfg,
            spec,
            [*validators, *private.validators()] if private else validators,
            private.authorizer(signing_key) if private else None,
        )
        stoppers.append(dht.shutdown)
        if private is not None:
            private.attach(dht, signing_key)  # our member record, so that donors let our state pulls in
        if not publish_config(dht, cfg, signature.local_public_key):
            logger.warning("the DHT did not accept the run config record")
        public_host = spec.public_host or (spec.host if spec.host not in ("0.0.0.0", "::") else guess_public_host())
        initial_peers = [
            str(a).replace("/ip4/0.0.0.0/", f"/ip4/{public_host}/")
            for a in dht.get_visible_maddrs()
            if "/p2p-circuit" not in str(a)
        ]

        court = BanCourt(dht, store, cfg.run_id, signature.local_public_key)
        monitor = Monitor(
            dht,
            store,
            cfg.run_id,
            alive_window=spec.alive_window,
            interval=spec.monitor_interval,
            bans=court,
            forget_after=max(3600.0, 10 * spec.alive_window),
        )
        saver = CheckpointSaver(cfg, spec, dht, store, ckpts)
        threads = [
            threading.Thread(target=monitor.run, args=(stop,), name="monitor", daemon=True),
        ]
        if private is not None:
            # its own thread, not the main loop's: a checkpoint pull blocks that loop for up to state_timeout, and a
            # revocation (an allowlist edit, a ban) must reach the swarm within seconds
            threads.append(
                threading.Thread(
                    target=run_private, args=(private, stop, spec.monitor_interval), name="private-run", daemon=True
                )
            )
            stoppers.append(private.authority.issued.close)

        metrics = CoordinatorMetrics(store)
        http_port = spec.http_port or _free_port(spec.host)  # the join line needs the port before the app exists
        join = " ".join(
            ["python -m peer join --coordinator", f"http://{public_host}:{http_port}", *spec.extra_join_args]
            + (["--auth_key", "NAME:KEY"] if private else [])  # the key `coordinator allowlist add` printed
        )
        run_info = RunInfo(cfg.run_id, config_to_dict(cfg), initial_peers, join)
        run_info = dataclasses.replace(run_info, bans=ban_authority_info(signature.local_public_key))
        if private is not None:
            run_info = dataclasses.replace(run_info, auth=private.run_info_auth())
        app = create_http_app(store, ckpts.root, run_info, metrics, authority=private.authority if private else None)
        http = start_http_server(app, host=spec.host, port=http_port)
        stoppers.append(http.stop)
        grpc = start_grpc_server(store, ckpts.root, host=spec.host, port=spec.grpc_port, metrics=metrics)
        stoppers.append(grpc.stop)
        for thread in threads:
            thread.start()
    except OSError as e:
        _run_all(stoppers)
        raise UserError(str(e).splitlines()[0] if str(e) else repr(e)) from None
    except BaseException:
        _run_all(stoppers)
        raise
    running = RunningCoordinator(
        cfg=cfg,
        spec=spec,
        store=store,
        ckpts=ckpts,
        dht=dht,
        http_port=http.port,
        grpc_port=grpc.port,
        public_host=public_host,
        initial_peers=initial_peers,
        join_command=join,
        signing_public_key=signature.local_public_key,
        private=private,
        saver=saver,
        _stop=stop,
        _threads=threads,
        _stoppers=stoppers,
    )
    return running


def run_private(private: PrivateRun, stop: threading.Event, interval: float) -> None:
    """A private run's upkeep until ``stop``: our member record renewed, revocations published, the DHT's token
    refusals counted (``PrivateRun.tick``)."""
    while not stop.wait(interval):
        try:
            private.tick()
        except Exception:
            logger.exception("could not refresh the private run's membership, revocations or token counts")


def _run_all(stoppers: list[Callable[[], None]]) -> None:
    for stopper in reversed(stoppers):
        try:
            stopper()
        except Exception:
            logger.exception("error while cleaning up")
