"""Attacker peers, and the scenario "1 attacker among N peers, defences on or off".

An attacker is a real peer process: ``python -m bench.faultlib.attacks --attack KIND join ...`` runs the real join
code (config from the coordinator, DHT, state download, training loop, metrics) with one difference: its gradient
and state averagers (subclasses of the peer's own, injected through ``JoinOptions.averagers``) replace what it sends
to the swarm, just before the all-reduce, by

- ``sign_flip``: ``-1000 ×`` its honest tensor;
- ``random``: a random direction with ``1000 ×`` the honest tensor's norm;
- ``nan``: NaN everywhere.

That is after the peer's own finite checks (the loop's loss / gradient checks run before ``opt.step``), as a real
attacker would do it. It keeps training on what the swarm sends back (when finite), so it stays in step with the
swarm and attacks every round. Not modelled: a reducer returning wrong averages for the parts it reduces (honest
peers only check that averages are finite; BTARD verifies reducers with random validators, out of scope here).

``run_attack_scenario`` starts a coordinator and ``peers`` peers (the last one the attacker) on a tiny model in
sync mode, trains ``steps`` global steps, saves the swarm's state through the coordinator, and evaluates it on the
held-out batches; ``attack=None`` is the clean run the others are compared with.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from peer.swarm.averagers import AveragerKinds, GuardedGradientAverager, GuardedStateAverager

logger = logging.getLogger(__name__)

ATTACKS = ("sign_flip", "random", "nan")
SCALE = 1000.0


@torch.no_grad()
def corrupt(tensor: torch.Tensor, attack: str, generator: torch.Generator) -> torch.Tensor:
    """What the attacker sends instead of ``tensor`` (a new tensor; ``tensor`` is untouched)."""
    if attack == "sign_flip":
        return tensor * -SCALE
    if attack == "random":
        direction = torch.randn(tensor.shape, generator=generator, dtype=torch.float32).to(tensor.dtype)
        norm = float(tensor.norm())
        return direction * (SCALE * max(norm, 1e-3) / max(float(direction.norm()), 1e-12))
    if attack == "nan":
        return torch.full_like(tensor, float("nan"))
    raise ValueError(f"unknown attack {attack!r} (one of {', '.join(ATTACKS)})")


class AttackMixin:
    """Corrupts every tensor this averager contributes to an all-reduce round, then adopts the (finite) result."""

    attack: str = "sign_flip"

    async def _run_allreduce_inplace_(self, tensors, group_info, group_id=None, **kwargs):
        generator = torch.Generator().manual_seed(int(time.time() * 1000) % (2**31))
        sent = [corrupt(t, self.attack, generator) for t in tensors]
        await super()._run_allreduce_inplace_(sent, group_info, group_id, **kwargs)
        with torch.no_grad():
            for tensor, result in zip(tensors, sent, strict=True):
                if bool(torch.isfinite(result).all()):
                    tensor.copy_(result)


def attacker_kinds(attack: str) -> AveragerKinds:
    """Averager classes of an attacker peer: the peer's own, with ``AttackMixin`` in front."""
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r} (one of {', '.join(ATTACKS)})")
    gradient = type("AttackGradientAverager", (AttackMixin, GuardedGradientAverager), {"attack": attack})
    state = type("AttackStateAverager", (AttackMixin, GuardedStateAverager), {"attack": attack})
    return AveragerKinds(gradient=gradient, state=state)


def attacker_main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.faultlib.attacks --attack KIND join <peer join flags>``: a real peer that attacks."""
    from peer.cli.join import register as register_join
    from peer.cli.join import resolve_config
    from peer.swarm.loop import LoopOptions
    from peer.swarm.session import JoinOptions, join_swarm
    from peer.swarm.shutdown import StopSignal

    parser = argparse.ArgumentParser(prog="python -m bench.faultlib.attacks", description=attacker_main.__doc__)
    parser.add_argument("--attack", choices=ATTACKS, required=True)
    sub = parser.add_subparsers(dest="command", required=True)
    register_join(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg, from_coordinator = resolve_config(args)
    stop = StopSignal().install()
    try:
        result = join_swarm(
            cfg,
            JoinOptions(
                coordinator_url=cfg.swarm.coordinator_url,
                config_from_coordinator=from_coordinator,
                init_dir=args.init_dir,
                work_dir=args.work_dir,
                join_timeout=args.join_timeout,
                startup_timeout=args.startup_timeout,
                loop=LoopOptions(
                    max_global_steps=args.max_steps,
                    max_seconds=args.max_seconds,
                    peer_name=args.peer_name,
                    show_status=False,
                ),
                averagers=attacker_kinds(args.attack),
            ),
            stop,
        )
    finally:
        stop.restore()
    print(f"attacker ({args.attack}) left the swarm at global step {result.global_step}")
    return 0


@dataclass
class AttackResult:
    """One scenario run. Losses are the held-out loss of the swarm's state at ``step`` (NaN if non-finite)."""

    attack: str | None
    defences: bool
    peers: int
    step: int
    final_loss: float
    clean_loss: float | None = None  # filled by the caller that also ran the clean scenario
    banned: list[str] = field(default_factory=list)  # peer names the coordinator banned
    attacker: str = ""
    locally_banned_by: list[str] = field(default_factory=list)  # honest peers whose ledger banned the attacker
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_checkpoint(ckpt: Path, config: Path, eval_batches: int = 4) -> float:
    """Held-out loss of a checkpoint dir (with its tokenizer) under the run config ``config``; NaN if non-finite."""
    from transformers import AutoTokenizer

    from peer.config import load_config
    from peer.data import build_heldout_batches
    from peer.modeling import load_models
    from peer.objectives import build_objective

    cfg = load_config(config, [])
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    models = load_models(ckpt)
    objective = build_objective(cfg, models, tokenizer.mask_token_id, seed=0)
    batches = build_heldout_batches(cfg.data, tokenizer, cfg.train.batch_size, cfg.objective.name, eval_batches)
    loss = float(objective.evaluate(batches)["loss"])
    return loss if math.isfinite(loss) else float("nan")


def run_attack_scenario(
    attack: str | None,
    defences: bool,
    workdir: Path,
    peers: int = 4,
    steps: int = 12,
    timeout: float = 420.0,
    eval_batches: int = 4,
) -> AttackResult:
    """``peers`` real peers (the last one attacks with ``attack``; None: all honest) train ``steps`` global steps in
    sync mode with robust averaging ``defences`` on or off; returns the held-out loss of the swarm's state then,
    and who ended banned. Every process is reaped on return or failure."""
    from bench.faultlib.procs import Coordinator, ProcessSet, TinyModel, prepare_run, start_peer

    began = time.monotonic()
    workdir = Path(workdir)
    tag = f"{attack or 'clean'}-{'on' if defences else 'off'}"
    model = TinyModel()
    run = prepare_run(
        workdir / "run",
        f"attack-{tag}",
        model,
        swarm=dict(
            averaging="sync",
            robust_averaging=defences,
            compression="none",
            ban_after=2,
            matchmaking_time=3.0,
            averaging_timeout=30.0,
        ),
    )
    with ProcessSet(workdir / tag) as procs:
        coordinator = Coordinator(procs, run, workdir / tag / "coordinator", checkpoint_every=steps)
        coordinator.start()
        names = [f"peer{i}" for i in range(peers)]
        attacker = names[-1] if attack else ""
        children = []
        for name in names:
            if name == attacker:
                children.append(_start_attacker(procs, name, coordinator, attack))
            else:
                children.append(start_peer(procs, name, coordinator))
        ckpt = _wait_for_checkpoint(coordinator, steps, timeout, children)
        peers_now = coordinator.get("/api/v1/peers")["peers"]
        banned = sorted(p["name"] for p in peers_now if p.get("banned"))
        locally = sorted(c.name for c in children if c.name != attacker and attacker and _banned_in_log(c.text()))
        final_loss = evaluate_checkpoint(ckpt, run.config, eval_batches)
    return AttackResult(
        attack=attack,
        defences=defences,
        peers=peers,
        step=_ckpt_step(ckpt),
        final_loss=final_loss,
        banned=banned,
        attacker=attacker,
        locally_banned_by=locally,
        seconds=time.monotonic() - began,
    )


def _start_attacker(procs, name: str, coordinator, attack: str):
    work = procs.work / name
    return procs.start(
        name,
        ["-m", "bench.faultlib.attacks", "--attack", attack, "join", "--coordinator", coordinator.url, "--no_status",
         "--peer_name", name, "--work_dir", str(work), "--identity_path", str(procs.work / f"{name}.id"),
         "--host_maddrs", "/ip4/127.0.0.1/tcp/0"],
    )  # fmt: skip


def _banned_in_log(text: str) -> bool:
    return "banning " in text and " locally: " in text


def _ckpt_step(ckpt: Path) -> int:
    match = re.search(r"(\d+)$", ckpt.name)
    return int(match.group(1)) if match else -1


def _wait_for_checkpoint(coordinator, steps: int, timeout: float, children) -> Path:
    """The coordinator's first checkpoint at step >= ``steps`` (its dir), failing early if every peer died."""
    deadline = time.monotonic() + timeout
    root = coordinator.data_dir / "checkpoints"
    while True:
        done = sorted(p for p in root.glob("ckpt-*") if p.is_dir() and (p / "manifest.json").is_file())
        for path in done:
            if _ckpt_step(path) >= steps:
                return path
        if not any(c.alive() for c in children):
            tails = "\n".join(f"--- {c.name}\n{c.tail(1500)}" for c in children)
            raise RuntimeError(f"every peer exited before step {steps}:\n{tails}")
        if time.monotonic() > deadline:
            progress = coordinator.progress()
            raise TimeoutError(f"no checkpoint at step {steps} within {timeout:.0f} s (progress {progress})")
        time.sleep(1.0)


if __name__ == "__main__":
    sys.exit(attacker_main())
