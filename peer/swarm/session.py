"""One volunteer's session: get the run config, join the DHT, get the starting state, train, leave cleanly.

The order of the starting state is the issue's: the swarm's current state from peers (hivemind's state download);
if no peer holds state, the coordinator's latest checkpoint over HTTP; else the run's step-0 grown state, which
every peer can rebuild bit for bit because growth is deterministic and seeded.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from functools import partial

import hivemind

from peer.config import ConfigError, PeerSettings, RunConfig, config_from_dict, without_peer_keys
from peer.data import seed_from_bytes
from peer.errors import UserError
from peer.run.coordinator_client import RunAnswer, get_answer
from peer.run.records import config_key, metrics_key
from peer.run.work_dir import peer_work_dir
from peer.swarm.averaging import build_swarm_optimizer
from peer.swarm.bans import BanBook, BanGate, RejectionLedger, ban_validators, fetch_ban_authority
from peer.swarm.ddp import PeerGroup, SetupReport
from peer.swarm.dht import lock_identity, start_dht, visible_maddrs
from peer.swarm.gate import AllGates
from peer.swarm.loop import LoopOptions, LoopParts, LoopResult, train_loop
from peer.swarm.membership import Membership, authenticate_peer
from peer.swarm.metrics import RecordSigning, fetch_metrics, make_validators, swarm_fingerprint
from peer.swarm.overrides.averagers import AveragerKinds
from peer.swarm.reachability import check_reachable
from peer.swarm.shutdown import StopSignal
from peer.swarm.state import resume_swarm_state, starting_point
from peer.swarm.swarm_optimizer import SwarmOptimizer
from peer.swarm.training_inputs import fit_micro_batch, heldout_evaluation, load_tokenizer, training_inputs
from peer.trainer import compile_models, param_groups, resolve_device, step_spec
from peer.trainer.hardware import StartupFacts, startup_line
from peer.trainer.recipe import run_optimizer_factories
from peer.trainer.step import StepSpec

logger = logging.getLogger(__name__)


@dataclass
class CoordinatorRun:
    run_id: str
    config: RunConfig
    initial_peers: list[str]
    authority_public_key: str | None = None  # the key to check access tokens with (None: an open run, no pin)


def fetch_run(url: str, timeout: float = 30.0, pinned_authority_key: str | None = None) -> CoordinatorRun:
    """``GET /api/v1/run`` of a coordinator: the run config, the swarm's initial peers and, for a private run, the
    key its access tokens are signed with (``pinned_authority_key`` wins over the coordinator's). UserError in one
    line if the URL is not a reachable warmswarm coordinator, or its run config is not one this peer can use.

    Per-peer keys in the published config (a coordinator from before ``PeerSettings``) are ignored, with one log
    line: this peer's own settings come from its flags."""
    base = url.rstrip("/")
    run = get_answer(base, RunAnswer, timeout=timeout)
    published, ignored = without_peer_keys(run.config)
    if ignored:
        logger.info("ignoring the per-peer keys in the run config from %s: %s", base, ", ".join(ignored))
    try:
        cfg = config_from_dict(published)
    except ConfigError as e:
        raise UserError(f"the coordinator at {base} sent a run config this peer cannot use: {e}") from None
    authority = pinned_authority_key
    auth = run.auth or {}
    if auth.get("required"):  # a private run: the key its access tokens are signed with
        authority = authority or auth.get("authority_public_key")
        if not authority:
            raise UserError(f"the coordinator at {base} runs a private run but sent no authority_public_key")
    return CoordinatorRun(run.run_id, cfg, list(run.initial_peers), authority)


def check_run_is_live(dht: hivemind.DHT, cfg: RunConfig, timeout: float) -> None:
    """With initial peers given, the run must be visible in the DHT within ``timeout``: a record of its config,
    metrics or hivemind progress. Catches a wrong run_id (or a swarm of another run) instead of training alone."""
    keys = [config_key(cfg.run_id), metrics_key(cfg.run_id), f"{cfg.run_id}_progress"]
    deadline = time.monotonic() + timeout
    while True:
        if any(dht.get(key, latest=True) is not None for key in keys):
            return
        if time.monotonic() >= deadline:
            raise UserError(
                f"no peer of run {cfg.run_id!r} found through the initial peers within {timeout:.0f}s: "
                "check the run_id (or join with --coordinator URL to get the right config)"
            )
        time.sleep(1.0)


def check_fingerprint(dht: hivemind.DHT, cfg: RunConfig) -> None:
    """Refuses to join when live peers publish a different model/objective/averaging fingerprint."""
    mine = swarm_fingerprint(cfg)
    theirs = {m.fingerprint for m in fetch_metrics(dht, cfg.run_id).values() if m.fingerprint}
    if theirs and mine not in theirs:
        raise UserError(
            f"this config's model/objective/averaging settings do not match the swarm's (fingerprint {mine} vs "
            f"{', '.join(sorted(theirs))}); join with --coordinator URL to use the run's config"
        )


@dataclass
class JoinOptions:
    config_from_coordinator: bool = False
    init_dir: str | None = None
    work_dir: str | None = None  # None: peer.run.work_dir (XDG cache), outside the cwd
    join_timeout: float = 60.0
    startup_timeout: float = 60.0
    loop: LoopOptions | None = None
    averagers: AveragerKinds | None = None  # averager classes; None: the peer's own (the fault bench's attackers)
    group: PeerGroup | None = None  # this process is rank 0 of a torchrun group: the one that talks to the swarm


def startup_facts(cfg: RunConfig, params, device, spec: StepSpec) -> StartupFacts:
    mode = cfg.swarm.averaging + (" with overlapped rounds" if cfg.swarm.overlap_rounds else "")
    return StartupFacts(
        model=f"{cfg.model.architecture} {cfg.model.hidden_size}x{cfg.model.num_layers}",
        parameters=sum(p.numel() for p in params),
        device=device,
        precision=spec.precision,
        micro_batch=cfg.train.batch_size,
        grad_accum=spec.grad_accum,
        averaging=mode,
    )


def join_swarm(cfg: RunConfig, peer: PeerSettings, options: JoinOptions, stop: StopSignal) -> LoopResult:
    """Runs one peer (its own settings ``peer``) in run ``cfg`` until stopped (or a loop limit) and leaves the
    swarm; raises UserError on bad input."""

    lock = lock_identity(peer.identity_path) if peer.identity_path else None
    dht: hivemind.DHT | None = None
    opt: SwarmOptimizer | None = None
    membership: Membership | None = None
    try:
        signing: RecordSigning = make_validators(cfg.run_id, peer.identity_path)  # the volunteer's key
        signing.validators.extend(ban_validators(cfg.run_id))
        private = authenticate_peer(cfg.run_id, peer, signing)  # a private run: a token before the DHT
        dht = start_dht(
            peer,
            signing.validators,
            startup_timeout=options.startup_timeout,
            authorizer=private.authorizer() if private else None,
        )
        membership = private.join(dht, on_revoked=lambda why: stop.set()) if private else None
        logger.info("visible at %s", " ".join(visible_maddrs(dht)))
        if peer.coordinator_url and not (peer.client_mode or peer.use_auto_relay):  # relays make it reachable
            check_reachable(peer.coordinator_url, visible_maddrs(dht))
        if peer.initial_peers and not options.config_from_coordinator:
            check_run_is_live(dht, cfg, options.join_timeout)
        check_fingerprint(dht, cfg)
        tokenizer = load_tokenizer(cfg, options.init_dir)
        work_dir = peer_work_dir(cfg.run_id, options.work_dir)  # --work_dir, else $XDG_CACHE_HOME/warmswarm/RUN_ID
        work_dir.mkdir(parents=True, exist_ok=True)
        start = starting_point(cfg, dht, peer.coordinator_url, options.init_dir, work_dir, tokenizer)
        models = start.models
        group = options.group  # rank 0 of a multi-GPU peer (peer.swarm.ddp), else None
        device = group.device if group is not None else resolve_device(cfg.train)
        models.to(device).train()
        seed = seed_from_bytes(signing.data_seed_material)
        if peer.batch_size == "auto":
            if group is not None:
                raise UserError("--batch_size auto is for a one-process peer: give a torchrun group's ranks a number")
            fitted = fit_micro_batch(cfg, models, tokenizer, seed, device)
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=fitted))
        objective, batches = training_inputs(cfg, models, tokenizer, seed)
        evaluate = heldout_evaluation(cfg, objective, tokenizer)
        params = models.parameters()
        world = group.world_size if group is not None else 1
        spec = step_spec(cfg.train, device)
        logger.info(startup_line(startup_facts(cfg, params, device, spec)))
        if cfg.train.compile:
            compile_models(models)
        ban_gate = BanGate(dht, cfg.run_id, signing.public_key, fetch_ban_authority(peer.coordinator_url))
        opt = build_swarm_optimizer(
            dht,
            cfg.run_id,
            cfg.swarm,
            param_groups(params, cfg.train.weight_decay),
            *run_optimizer_factories(cfg),
            batch_size=cfg.train.batch_size * cfg.train.grad_accum * world,
            gate=AllGates([ban_gate, membership.gate]) if membership else ban_gate,
            open_run=private is None,
            client_mode=peer.client_mode,
            kinds=options.averagers,
        )
        opt.bans = BanBook(
            dht, cfg.run_id, signing.public_key, RejectionLedger(cfg.swarm.ban_after, cfg.swarm.local_ban_seconds)
        )
        stop.reassert()  # starting hivemind's averagers set SIGINT to ignored; Ctrl-C must still stop this peer
        # checkpoint's optimizer state, then the peers' state (bounded, Ctrl-C stops it), else a checkpoint
        resume_swarm_state(opt, start, cfg, dht, stop, peer.coordinator_url, work_dir)
        logger.info("starting at global step %d", opt.global_step)
        if group is not None:
            group.report_setup(SetupReport(ok=True, seed=seed, shapes=tuple(tuple(p.shape) for p in params)))
        loop_options = options.loop or LoopOptions()
        loop_options.fingerprint = swarm_fingerprint(cfg)
        loop_options.metrics_expiration = cfg.swarm.metrics_expiration
        loop_options.own_ban = partial(ban_gate.coordinator_ban, dht.peer_id)
        parts = LoopParts(
            params=params,
            objective=objective,
            batches=batches,
            group=group,
            step=spec,
            evaluate=evaluate,
            eval_every=cfg.train.eval_every,
        )
        return train_loop(dht, cfg.run_id, signing, opt, parts, stop, loop_options)
    finally:
        if opt is not None:
            opt.shutdown()
        if membership is not None:
            membership.stop()
        if dht is not None:
            dht.shutdown()
        if lock is not None:
            lock.release()
