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

from peer.config import (
    ConfigError,
    ModelSpec,
    PeerSettings,
    RunConfig,
    config_from_dict,
    model_stages,
    without_peer_keys,
)
from peer.data import seed_from_bytes
from peer.errors import UserError
from peer.run.coordinator_client import RunAnswer, get_answer
from peer.run.records import config_key, metrics_key
from peer.run.state_format import read_checkpoint_stage
from peer.run.work_dir import peer_work_dir
from peer.swarm.averaging import build_swarm_optimizer
from peer.swarm.bans import BanBook, BanGate, RejectionLedger, ban_validators, fetch_ban_authority
from peer.swarm.ddp import PeerGroup, SetupReport
from peer.swarm.dht import lock_identity, start_dht, visible_maddrs
from peer.swarm.gate import AllGates
from peer.swarm.loop import LoopOptions, LoopParts, LoopResult, train_loop
from peer.swarm.membership import Membership, authenticate_peer
from peer.swarm.metrics import RecordSigning, fetch_metrics, make_validators, swarm_fingerprint
from peer.swarm.modes import averaging_mode
from peer.swarm.overrides.averagers import AveragerKinds
from peer.swarm.reachability import check_reachable
from peer.swarm.shutdown import StopSignal
from peer.swarm.stage_keys import stage_at, stage_prefix, swarm_step
from peer.swarm.stage_switch import StageSwitcher
from peer.swarm.starting_state import (
    StartingPoint,
    resume_stage_state,
    resume_swarm_state,
    stage_checkpoint,
    starting_point,
)
from peer.swarm.state import peers_hold_state, wait_for_stage_state
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


def joining_stage(dht: hivemind.DHT, cfg: RunConfig, stages: list[tuple[int, ModelSpec]]) -> int:
    """The growth stage this peer joins in: the one the swarm's global step (the highest step the run's peers
    publish) is in (``peer.swarm.stage_keys``). 0 for a run without a schedule, without reading anything."""
    if len(stages) == 1:
        return 0
    mine = swarm_fingerprint(cfg)
    step = swarm_step(m.step for m in fetch_metrics(dht, cfg.run_id).values() if m.fingerprint == mine)
    stage = stage_at(stages, step)
    if stage:
        logger.info("the swarm is at global step %d: joining growth stage %d", step, stage)
    return stage


def stage_start(
    cfg: RunConfig, stage: int, spec: ModelSpec, dht: hivemind.DHT, tokenizer, init_dir: str | None, stop: StopSignal
) -> StartingPoint:
    """A joiner's models after the run's first switch: the stage's shapes, whose values the stage's peers send
    (``resume_stage_state``). Why not ``--init_dir``: it holds the first stage's model (a coordinator's checkpoint
    of the stage is used before this, when no peer of the stage shares its state: ``stage_checkpoint``)."""
    from peer.modeling import build_models

    if init_dir:
        logger.info("--init_dir holds the first stage's model: stage %d's state comes from its peers", stage)
    wait_for_stage_state(dht, stage_prefix(cfg.run_id, stage), stage, cfg.swarm.load_state_timeout, stop)
    return StartingPoint(build_models(spec, len(tokenizer), tokenizer.pad_token_id or 0, seed=cfg.growth.seed), None)


def checkpoint_stage(start: StartingPoint, stages: list[tuple[int, ModelSpec]]) -> int:
    """The growth stage of the checkpoint a peer starts from (0 for none, or for shapes only): a coordinator's
    checkpoint taken after a switch holds the grown model, and the peer trains on in that stage, under its keys,
    rather than growing it again. UserError in one line for a stage the run's schedule does not have."""
    if start.checkpoint_dir is None:
        return 0
    stage = read_checkpoint_stage(start.checkpoint_dir)
    if stage >= len(stages):
        raise UserError(
            f"{start.checkpoint_dir.name} is a checkpoint of growth stage {stage}, and this run's schedule has "
            f"{len(stages)} stage(s): join with --coordinator URL to use the run's config"
        )
    if stage:
        logger.info("%s is a checkpoint of growth stage %d: training in that stage", start.checkpoint_dir.name, stage)
    return stage


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
    return StartupFacts(
        model=f"{cfg.model.architecture} {cfg.model.hidden_size}x{cfg.model.num_layers}",
        parameters=sum(p.numel() for p in params),
        device=device,
        precision=spec.precision,
        micro_batch=cfg.train.batch_size,
        grad_accum=spec.grad_accum,
        averaging=averaging_mode(cfg.swarm).describe(cfg.swarm),
    )


def join_swarm(cfg: RunConfig, peer: PeerSettings, options: JoinOptions, stop: StopSignal) -> LoopResult:
    """Runs one peer (its own settings ``peer``) in run ``cfg`` until stopped (or a loop limit) and leaves the
    swarm; raises UserError on bad input."""

    lock = lock_identity(peer.identity_path) if peer.identity_path else None
    dht: hivemind.DHT | None = None
    opt: SwarmOptimizer | None = None
    membership: Membership | None = None
    switcher: StageSwitcher | None = None
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
        stages = model_stages(cfg)
        stage = joining_stage(dht, cfg, stages)
        if stage == 0:
            start = starting_point(cfg, dht, peer.coordinator_url, options.init_dir, work_dir, tokenizer)
            stage = checkpoint_stage(start, stages)
        else:
            start = None
            if not peers_hold_state(dht, stage_prefix(cfg.run_id, stage)):  # the stage's peers left, or are growing
                start = stage_checkpoint(peer.coordinator_url, stage, work_dir)
            if start is None:
                start = stage_start(cfg, stage, stages[stage][1], dht, tokenizer, options.init_dir, stop)
        # from a checkpoint (of its stage) or step 0, then that stage's peers; else from the stage's peers alone
        from_stage_peers = start.checkpoint_dir is None and stage > 0
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
        staged = dataclasses.replace(cfg, model=stages[stage][1])  # the model line says the stage's sizes
        logger.info(startup_line(startup_facts(staged, params, device, spec)))
        if cfg.train.compile:
            compile_models(models)
        ban_gate = BanGate(dht, cfg.run_id, signing.public_key, fetch_ban_authority(peer.coordinator_url))
        bans = BanBook(
            dht, cfg.run_id, signing.public_key, RejectionLedger(cfg.swarm.ban_after, cfg.swarm.local_ban_seconds)
        )  # the run's, not a stage's: local bans and reports go on across a growth switch

        def build(index: int, stage_params: list) -> SwarmOptimizer:
            """The optimizer of growth stage ``index`` (its DHT prefix: the run_id itself for stage 0)."""
            built = build_swarm_optimizer(
                dht,
                stage_prefix(cfg.run_id, index),
                cfg.swarm,
                param_groups(stage_params, cfg.train.weight_decay),
                *run_optimizer_factories(cfg),
                batch_size=cfg.train.batch_size * cfg.train.grad_accum * world,
                gate=AllGates([ban_gate, membership.gate]) if membership else ban_gate,
                open_run=private is None,
                client_mode=peer.client_mode,
                kinds=options.averagers,
            )
            built.bans = bans
            stop.reassert()  # starting hivemind's averagers set SIGINT to ignored; Ctrl-C must still stop this peer
            return built

        opt = build(stage, params)
        if not from_stage_peers:
            # checkpoint's optimizer state, then the peers' state (bounded, Ctrl-C stops it), else a checkpoint
            prefix = stage_prefix(cfg.run_id, stage)
            resume_swarm_state(opt, start, cfg, dht, stop, peer.coordinator_url, work_dir, prefix, stage)
        else:
            prefix = stage_prefix(cfg.run_id, stage)
            timeout = cfg.swarm.load_state_timeout
            resume_stage_state(opt, models, dht, prefix, timeout, stop, peer.coordinator_url, stage)
        if len(stages) > 1:
            switcher = StageSwitcher(
                stages,
                stage,
                models,
                build,
                cfg.growth.depth_method,
                cfg.swarm.averaging_timeout,
                current=opt,
                grace=cfg.growth.switch_grace,
            )
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
            stages=switcher,
        )
        return train_loop(dht, cfg.run_id, signing, opt, parts, stop, loop_options)
    finally:
        if switcher is not None:
            switcher.close()
            opt = switcher.current  # the stage's optimizer the loop ended with (None: a switch failed between them)
        if opt is not None:
            opt.shutdown()
        if membership is not None:
            membership.stop()
        if dht is not None:
            dht.shutdown()
        if lock is not None:
            lock.release()
