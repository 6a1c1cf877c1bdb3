"""``python -m peer join``: train with the swarm, from a run config file or a coordinator URL."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os

import torch

from peer.cli._options import add_overrides
from peer.config import PEER_TRAIN_KEYS, PeerSettings, RunConfig, load_config, peer_train_overrides, with_peer_train
from peer.errors import UserError
from peer.run.tokens import AUTH_KEY_ENV
from peer.swarm.ddp import (
    PeerGroup,
    RankInfo,
    SetupReport,
    collective_timeout,
    rank_from_env,
)
from peer.swarm.follower import follow_swarm
from peer.swarm.loop import LoopOptions
from peer.swarm.membership import allowlisted_name
from peer.swarm.modes import averaging_mode
from peer.swarm.session import JoinOptions, fetch_run, join_swarm
from peer.swarm.shutdown import StopSignal

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "join",
        help="join a training swarm and contribute compute",
        description="Join a warmswarm run: download its state, train, average with the other peers. "
        "Ctrl-C (or SIGTERM) leaves the swarm cleanly. With N GPUs: torchrun --nproc-per-node N -m peer join ... "
        "(rank 0 talks to the swarm, the group counts as one peer).",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--coordinator", metavar="URL", help="coordinator HTTP URL: fetch the run config and peers")
    source.add_argument("-c", "--config", metavar="YAML", help="run config file (then give --initial_peers)")
    p.add_argument(
        "--initial_peers",
        nargs="*",
        default=None,
        metavar="MULTIADDR",
        help="multiaddrs of peers already in the swarm (as printed by the coordinator)",
    )
    p.add_argument(
        "--host_maddrs",
        nargs="*",
        default=None,
        metavar="MULTIADDR",
        help="addresses to listen on, e.g. /ip4/0.0.0.0/tcp/31337 (default: any interface, random port)",
    )
    p.add_argument(
        "--announce_maddrs",
        nargs="*",
        default=None,
        metavar="MULTIADDR",
        help="public addresses other peers should dial (behind port forwarding)",
    )
    p.add_argument(
        "--identity_path",
        default=None,
        metavar="FILE",
        help="private key file for a persistent peer id (created if missing; one running peer per file)",
    )
    p.add_argument(
        "--client_mode",
        action="store_true",
        default=None,
        help="do not accept incoming connections (peers behind NAT/firewall)",
    )
    p.add_argument(
        "--no_relay",
        action="store_false",
        dest="use_relay",
        help="do not use libp2p circuit relays to reach peers behind NAT (on by default)",
    )
    p.add_argument(
        "--use_auto_relay",
        action="store_true",
        help="look for libp2p relays by itself to become reachable from behind NAT/firewall",
    )
    p.add_argument("--peer_name", default="", help="display name on the coordinator's dashboard")
    p.add_argument(
        "--auth_key",
        default=None,
        metavar="NAME:SECRET",
        help="your key for a private run, as the organiser sent it (default: env WARMSWARM_AUTH_KEY)",
    )
    p.add_argument(
        "--authority_public_key",
        default=None,
        metavar="KEY",
        help="a private run's token-signing key (OpenSSH text) to trust instead of the one the coordinator sends",
    )
    p.add_argument(
        "--init_dir",
        default=None,
        metavar="DIR",
        help="start from this model dir (e.g. a grown step-0 or a downloaded checkpoint)",
    )
    p.add_argument(
        "--work_dir",
        default=None,
        metavar="DIR",
        help="where downloaded checkpoints and the grown step-0 state are kept (default: "
        "$XDG_CACHE_HOME/warmswarm/RUN_ID, or ~/.cache/warmswarm/RUN_ID when XDG_CACHE_HOME is unset)",
    )
    p.add_argument("--max_steps", type=int, default=None, help="leave once the swarm reaches this global step")
    p.add_argument("--max_seconds", type=float, default=None, help="leave after this many seconds of training")
    p.add_argument(
        "--wait_for_peers",
        type=int,
        default=1,
        metavar="N",
        help="start training only once N peers of the run (this one included; a torchrun group is one) are present",
    )
    p.add_argument(
        "--join_timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the run to be visible through --initial_peers before giving up",
    )
    p.add_argument(
        "--startup_timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the p2p daemon to start and reach the initial peers",
    )
    add_overrides(
        p,
        "swarm.averaging=diloco",
        "; with --coordinator only this peer's own train.batch_size, train.grad_accum, train.device, train.precision, "
        "train.compile",
    )
    mine = p.add_argument_group("this machine's training step (default: the run config's train.*)")
    mine.add_argument(
        "--batch_size",
        type=batch_size_arg,
        default=None,
        metavar="N|auto",
        help="samples per micro-batch; auto: the largest that fits the GPU's memory, on CPU the fastest (probe steps)",
    )
    mine.add_argument(
        "--grad_accum", type=int, default=None, metavar="N", help="micro-batches accumulated into each local step"
    )
    mine.add_argument("--device", default=None, help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    mine.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default=None,
        help="auto: bf16 on a CUDA card that has it, fp16 with loss scaling on older cards, fp32 on mps and cpu",
    )
    mine.add_argument(
        "--compile", action="store_true", default=None, help="torch.compile the model (slow start, faster steps)"
    )
    p.add_argument(
        "--no_status",
        action="store_true",
        help="no live status line: a progress log line every train.log_every steps instead (also when stdout or "
        "stderr is not a terminal)",
    )
    p.add_argument(
        "--save_params",
        default=None,
        metavar="FILE",
        help="on leaving, write this peer's parameters to FILE (safetensors), e.g. to check that replicas agree",
    )
    p.set_defaults(func=run)


def batch_size_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None


def resolve_config(args: argparse.Namespace) -> tuple[RunConfig, PeerSettings, bool]:
    """The run config (the coordinator's, or a file with ``--set`` applied) with this peer's own training-step
    settings in ``train`` (``PEER_TRAIN_KEYS``: its flags, else its ``--set train.KEY``), this peer's own settings
    from its flags, and True if the run came from a coordinator."""
    peer = PeerSettings()
    for name in ("initial_peers", "host_maddrs", "announce_maddrs", "identity_path", "client_mode"):
        value = getattr(args, name)
        if value is not None:
            setattr(peer, name, value)
    peer.use_relay, peer.use_auto_relay = args.use_relay, args.use_auto_relay
    peer.auth_key = args.auth_key or os.environ.get(AUTH_KEY_ENV) or None
    peer.authority_public_key = args.authority_public_key
    peer.peer_name = args.peer_name or allowlisted_name(peer.auth_key)
    own = peer_train_overrides(args.overrides) if args.coordinator else {}  # refused before any network
    for name in PEER_TRAIN_KEYS:
        value = getattr(args, name)
        setattr(peer, name, value if value is not None else own.get(name))
    if args.coordinator:
        run = fetch_run(args.coordinator, pinned_authority_key=peer.authority_public_key)
        cfg = run.config
        cfg.run_id = run.run_id
        if not args.initial_peers:
            peer.initial_peers = run.initial_peers
        peer.coordinator_url = args.coordinator
        peer.authority_public_key = run.authority_public_key
    else:
        cfg = load_config(args.config, args.overrides)
    return with_peer_train(cfg, peer), peer, bool(args.coordinator)


def join_options(
    args: argparse.Namespace, cfg: RunConfig, peer: PeerSettings, from_coordinator: bool, **overrides
) -> JoinOptions:
    """``JoinOptions`` from this command's parsed arguments; ``overrides`` (``group``, ``averagers``, ``loop``
    fields such as ``show_status``) are what a caller — a torchrun rank, the fault bench's attacker — sets itself."""
    loop_fields = {name: overrides.pop(name) for name in list(overrides) if name in LoopOptions.__dataclass_fields__}
    loop = LoopOptions(
        max_global_steps=args.max_steps,
        max_seconds=args.max_seconds,
        peer_name=peer.peer_name,
        show_status=not args.no_status,
        log_every=cfg.train.log_every,
        wait_for_peers=args.wait_for_peers,
        save_params=args.save_params,
    )
    return JoinOptions(
        config_from_coordinator=from_coordinator,
        init_dir=args.init_dir,
        work_dir=args.work_dir,
        join_timeout=args.join_timeout,
        startup_timeout=args.startup_timeout,
        loop=dataclasses.replace(loop, **loop_fields),
        **overrides,
    )


def run(args: argparse.Namespace) -> int:
    cfg, peer, from_coordinator = resolve_config(args)
    rank = rank_from_env()  # set by torchrun: this process is one rank of a multi-GPU peer
    check_growth_schedule(cfg, multi_rank=rank is not None)
    stop = StopSignal().install()
    group = start_group(rank, cfg) if rank is not None else None
    try:
        if group is not None and not group.is_leader:
            followed = follow_swarm(cfg, args.init_dir, group, stop.is_set)
            util = followed.compute_seconds / max(followed.wall_seconds, 1e-9)
            print(
                f"rank {rank.rank} of {rank.world_size} left with its group at global step {followed.global_step}: "
                f"{followed.local_steps} local steps, {followed.samples} samples, compute utilisation {util:.0%}, "
                f"params {followed.params_digest}"
            )
            return 0
        options = join_options(args, cfg, peer, from_coordinator, group=group)
        result = join_swarm(cfg, peer, options, stop)
    except BaseException as e:
        if group is not None and group.is_leader:  # followers wait for the leader's set-up: tell them it failed
            group.report_setup(SetupReport(ok=False, error=str(e).splitlines()[0] if str(e) else type(e).__name__))
        raise
    finally:
        if group is not None:
            group.close()
        stop.restore()
    util = result.compute_seconds / max(result.wall_seconds, 1e-9)
    where = f"rank 0 of {rank.world_size}: " if rank is not None else ""
    print(
        f"{where}left the swarm at global step {result.global_step}: {result.local_steps} local steps, "
        f"{result.samples} samples, last loss {result.last_loss:.4f}, compute utilisation {util:.0%}, "
        f"{result.skipped_batches} batches skipped, {result.restored} restores, params {result.params_digest}"
    )
    return 0


def check_growth_schedule(cfg: RunConfig, multi_rank: bool) -> None:
    """A swarm peer grows mid-run as one process in a mode that can (``AveragingMode.grows_mid_run``: sync, through
    ``peer.swarm.stage_switch``); anything else with a growth.schedule is refused in one line rather than trained past
    a switch unchanged. Why not torchrun ranks: the followers would have to rebuild their models at the switch."""
    if not cfg.growth.schedule:
        return
    if not averaging_mode(cfg.swarm).grows_mid_run:
        raise UserError(
            f"this run has a growth.schedule, and swarm peers grow mid-run in sync averaging only, not "
            f"{cfg.swarm.averaging!r}"
        )
    if multi_rank:
        raise UserError("this run has a growth.schedule, and a multi-GPU (torchrun) peer cannot grow mid-run yet")


def start_group(rank: RankInfo, cfg: RunConfig) -> PeerGroup:
    """The process group of a ``torchrun --nproc-per-node N`` peer: one GPU per rank (cuda:LOCAL_RANK), or gloo
    on CPU."""
    from peer.trainer import resolve_device

    device = resolve_device(cfg.train)  # this peer's --device (or the run's train.device)
    if device.type == "cuda":
        device = torch.device("cuda", rank.local_rank)
    timeout = collective_timeout(cfg.swarm.load_state_timeout, cfg.swarm.averaging_timeout, cfg.swarm.matchmaking_time)
    return PeerGroup(rank, device, timeout)
