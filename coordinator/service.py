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
  4. the monitor thread (DHT metrics -> store), the background evaluator's thread (``coordinator.evaluator``: each
     new checkpoint evaluated in a low-priority process of its own), the background exporter's
     (``coordinator.export.background``: the ``--export_forms`` of each checkpoint, likewise); the saver runs in the
     caller's (main) thread inside ``wait``: every ``checkpoint_every`` global steps it pulls the averaged state
     from the peers and saves a checkpoint (hivemind averagers must be started from the main thread: they install
     signal handlers);
  5. the HTTP and gRPC servers, then the line a volunteer copies to join.

Each step's work is in a module of its own: ``coordinator.deployment`` (the ``CoordinatorSpec`` of flags),
``coordinator.initial_checkpoint`` (checkpoint 0), ``coordinator.dht_node`` (the DHT node, its known peers and the
config record), ``coordinator.checkpoint_saver`` (the pull-and-save) and ``coordinator.serving`` (the servers and the
join line). This module starts them in order, runs the main thread's loop and stops them.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import hivemind

from coordinator.allowlist import Allowlist
from coordinator.auth import PrivateRun
from coordinator.bans import BanCourt
from coordinator.checkpoint_saver import CheckpointSaver
from coordinator.checkpoints import CheckpointDir, sync_store
from coordinator.deployment import CoordinatorSpec, listen_ports, public_host_of
from coordinator.dht_node import (
    CONFIG_RECORD_TTL,
    publish_config,
    save_known_peers,
    start_coordinator_dht,
    visible_maddrs,
)
from coordinator.evaluator import BackgroundEvaluator
from coordinator.export.background import BackgroundExporter
from coordinator.initial_checkpoint import copy_model_dir, grow_initial_state
from coordinator.monitor import Monitor, counting_validators
from coordinator.preflight import refuse_early
from coordinator.serving import start_servers
from coordinator.signing_key import load_or_create_signing_key
from coordinator.store import Store
from peer.config import RunConfig, config_to_dict, model_stages
from peer.errors import UserError
from peer.lifetime import ProcessLock

logger = logging.getLogger(__name__)

DB_NAME = "coordinator.db"
CHECKPOINTS_SUBDIR = "checkpoints"
EVALUATIONS_SUBDIR = "evaluations"  # the background evaluator's job files, worker logs and reports in progress
EXPORT_WORK_SUBDIR = "export_work"  # the background exporter's staging dir, job files and worker logs
SIGNING_KEY_NAME = "coordinator_signing_key.der"


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
    evaluator: BackgroundEvaluator | None = None  # None: --no_eval
    exporter: BackgroundExporter | None = None  # None: --export_forms none

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


def lock_data_dir(data: Path) -> Callable[[], None]:
    """Takes the data dir's exclusive lock (one coordinator, one writer per data dir); returns its release. The lock
    of a coordinator that was killed is taken over (``ProcessLock``), so the same command starts again."""
    return ProcessLock(data / ".lock", f"data dir {data} is in use by another running coordinator").acquire().release


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

        # data: each checkpoint's model card names the run's corpus
        ckpts = CheckpointDir(data / CHECKPOINTS_SUBDIR, keep_last=spec.keep_last, data=cfg.data)
        report = ckpts.recover()
        for name in report.removed_tmp:
            logger.warning("removed an interrupted checkpoint write: %s", name)
        for message in report.corrupt:
            logger.error("corrupt checkpoint set aside: %s", message)
        sync_store(store, report.verified)
        if not report.verified:
            logger.info("creating checkpoint 0 (%s)", f"from {spec.init_from}" if spec.init_from else "growth")
            ckpts.save(0, writer, {"samples": 0, "run_id": cfg.run_id}, store=store)

        signature, validators = counting_validators(cfg.run_id, signing_key)
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
        public_host = public_host_of(spec)
        initial_peers = visible_maddrs(dht, public_host)

        court = BanCourt(dht, store, cfg.run_id, signature.local_public_key)
        monitor = Monitor(
            dht,
            store,
            cfg.run_id,
            alive_window=spec.alive_window,
            interval=spec.monitor_interval,
            bans=court,
            forget_after=max(3600.0, 10 * spec.alive_window),
            stages=model_stages(cfg),
        )
        saver = CheckpointSaver(cfg, spec, dht, store, ckpts)
        threads = [
            threading.Thread(target=monitor.run, args=(stop,), name="monitor", daemon=True),
        ]
        evaluator = None
        if spec.evaluation.enabled:
            # its own thread, which only starts and watches the worker process that does the work
            evaluator = BackgroundEvaluator(
                spec.evaluation, store, ckpts.root, data / EVALUATIONS_SUBDIR, config_to_dict(cfg)
            )
            threads.append(threading.Thread(target=evaluator.run, args=(stop,), name="evaluator", daemon=True))
        exporter = None
        if spec.exports.forms:
            # like the evaluator: a thread that starts and watches one low-priority worker process at a time
            exporter = BackgroundExporter(spec.exports, ckpts, data / EXPORT_WORK_SUBDIR, config_to_dict(cfg), store)
            threads.append(threading.Thread(target=exporter.run, args=(stop,), name="exporter", daemon=True))
        if private is not None:
            # its own thread, not the main loop's: a checkpoint pull blocks that loop for up to state_timeout, and a
            # revocation (an allowlist edit, a ban) must reach the swarm within seconds
            threads.append(
                threading.Thread(
                    target=run_private, args=(private, stop, spec.monitor_interval), name="private-run", daemon=True
                )
            )
            stoppers.append(private.authority.issued.close)

        servers = start_servers(
            cfg, spec, store, ckpts.root, public_host, initial_peers, signature.local_public_key, private, stoppers
        )
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
        http_port=servers.http.port,
        grpc_port=servers.grpc.port,
        public_host=public_host,
        initial_peers=initial_peers,
        join_command=servers.join_command,
        signing_public_key=signature.local_public_key,
        private=private,
        saver=saver,
        evaluator=evaluator,
        exporter=exporter,
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
