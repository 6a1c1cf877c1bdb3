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
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml

from peer.swarm.overrides.averagers import AveragerKinds
from peer.swarm.overrides.gradient_averager import GuardedGradientAverager
from peer.swarm.overrides.state_averager import GuardedStateAverager

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
        originals = [t.clone() for t in sent]
        await super()._run_allreduce_inplace_(sent, group_info, group_id, **kwargs)
        with torch.no_grad():
            for tensor, result, mine in zip(tensors, sent, originals, strict=True):
                # parts nobody averaged (a reducer refused us) come back as sent: keep our honest values there
                adopted = torch.where(result == mine, tensor, result)
                if bool(torch.isfinite(adopted).all()):
                    tensor.copy_(adopted)


def attacker_kinds(attack: str) -> AveragerKinds:
    """Averager classes of an attacker peer: the peer's own, with ``AttackMixin`` in front."""
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r} (one of {', '.join(ATTACKS)})")
    gradient = type("AttackGradientAverager", (AttackMixin, GuardedGradientAverager), {"attack": attack})
    state = type("AttackStateAverager", (AttackMixin, GuardedStateAverager), {"attack": attack})
    return AveragerKinds(gradient=gradient, state=state)


def attacker_main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.faultlib.attacks --attack KIND join <peer join flags>``: a real peer that attacks."""
    from peer.cli.join import join_options, resolve_config
    from peer.cli.join import register as register_join
    from peer.swarm.session import join_swarm
    from peer.swarm.shutdown import StopSignal

    parser = argparse.ArgumentParser(prog="python -m bench.faultlib.attacks", description=attacker_main.__doc__)
    parser.add_argument("--attack", choices=ATTACKS, required=True)
    sub = parser.add_subparsers(dest="command", required=True)
    register_join(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg, peer, from_coordinator = resolve_config(args)
    stop = StopSignal().install()
    try:
        kinds = attacker_kinds(args.attack)
        options = join_options(args, cfg, peer, from_coordinator, show_status=False, averagers=kinds)
        result = join_swarm(cfg, peer, options, stop)
    finally:
        stop.restore()
    print(f"attacker ({args.attack}) left the swarm at global step {result.global_step}")
    return 0


@dataclass
class AttackResult:
    """One scenario run. ``final_loss``: the honest peers' mean training loss over the last ``window`` global
    steps (their own signed metrics records, polled at the coordinator); NaN if any was non-finite."""

    attack: str | None
    defences: bool
    peers: int
    step: int
    final_loss: float
    clean_loss: float | None = None  # filled by the caller that also ran the clean scenario
    start_loss: float = float("nan")  # the honest peers' mean loss at the first poll after they joined
    banned: list[str] = field(default_factory=list)  # peer names the coordinator banned
    attacker: str = ""
    locally_banned_by: list[str] = field(default_factory=list)  # honest peers whose ledger banned the attacker
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def run_attack_scenario(
    attack: str | None,
    defences: bool,
    workdir: Path,
    peers: int = 4,
    steps: int = 12,
    window: int = 3,
    lr: float = 3e-3,
    timeout: float = 600.0,
) -> AttackResult:
    """``peers`` real peers (the last one attacks with ``attack``; None: all honest) train ``steps`` global steps in
    sync mode with robust averaging ``defences`` on or off (``ban_after`` 2); returns the honest peers' training
    loss over the last ``window`` steps and who ended banned. ``lr`` is high enough that the tiny model's loss
    visibly moves in a dozen steps (so that an attack has something to spoil). Every process is reaped on return
    or failure."""
    from bench.faultlib.procs import Coordinator, TinyModel, prepare_run, start_peer
    from peer.children import ProcessSet

    began = time.monotonic()
    workdir = Path(workdir)
    tag = f"{attack or 'clean'}-{'on' if defences else 'off'}"
    run = prepare_run(
        workdir / tag / "run",
        f"attack-{tag}",
        TinyModel(),
        swarm=dict(
            averaging="sync",
            robust_averaging=defences,
            compression="none",
            ban_after=2,
            matchmaking_time=3.0,
            averaging_timeout=30.0,
        ),
    )
    config = yaml.safe_load(run.config.read_text())
    config["train"].update(lr=lr, warmup_steps=1)
    run.config.write_text(yaml.safe_dump(config, sort_keys=False))
    with ProcessSet(workdir / tag) as procs:
        coordinator = Coordinator(procs, run, workdir / tag / "coordinator", checkpoint_every=10**6)
        coordinator.start()
        names = [f"peer{i}" for i in range(peers)]
        attacker = names[-1] if attack else ""
        # --wait_for_peers: every peer (the attacker too) trains from the first round on, none alone at first while
        # the others start; a skewed start left two honest peers without the evidence to ban the attacker by step 8
        together = ("--wait_for_peers", str(peers))
        children = [
            _start_attacker(procs, n, coordinator, attack, *together)
            if n == attacker
            else start_peer(procs, n, coordinator, *together)
            for n in names
        ]
        honest = [n for n in names if n != attacker]
        start_loss, final_loss, step = _watch_losses(coordinator, honest, steps, window, timeout, children)
        if attack and not defences:
            _require_alive(next(c for c in children if c.name == attacker), steps)
        banned = sorted(p["name"] for p in coordinator.get("/api/v1/peers")["peers"] if p.get("banned"))
        locally = sorted(c.name for c in children if attacker and c.name != attacker and _banned_in_log(c.text()))
    return AttackResult(
        attack=attack,
        defences=defences,
        peers=peers,
        step=step,
        final_loss=final_loss,
        start_loss=start_loss,
        banned=banned,
        attacker=attacker,
        locally_banned_by=locally,
        seconds=time.monotonic() - began,
    )


def _start_attacker(procs, name: str, coordinator, attack: str, *extra: str):
    from bench.faultlib.procs import start_python

    work = procs.work / name
    return start_python(
        procs,
        name,
        ["-m", "bench.faultlib.attacks", "--attack", attack, "join", "--coordinator", coordinator.url, "--no_status",
         "--peer_name", name, "--work_dir", str(work), "--identity_path", str(procs.work / f"{name}.id"),
         "--host_maddrs", "/ip4/127.0.0.1/tcp/0", *extra],
    )  # fmt: skip


def _require_alive(attacker, steps: int) -> None:
    """Without defences nothing removes the attacker, so one that is gone by the last step exited by itself (a crash,
    a failed start on a loaded machine): the honest peers then trained without it, and their loss says nothing about
    the attack. Raised as such, with the attacker's last output, rather than judged as an attack that did no harm."""
    if not attacker.alive():
        raise RuntimeError(f"the attacker {attacker.name} exited before step {steps}: the attack did not run to the end"
                           f"\n{attacker.tail(1500)}")  # fmt: skip


def _banned_in_log(text: str) -> bool:
    return "banning " in text and " locally: " in text


class SwarmStalled(TimeoutError):
    """The swarm did not reach the step in time. With defences off that is what an attack does (the honest peers
    skip every non-finite or exploding batch and stop stepping); ``last_loss`` is the honest peers' mean training
    loss at the last poll (NaN if any was non-finite), so a caller can tell a spoiled swarm from a slow one."""

    def __init__(self, message: str, step: int, last_loss: float):
        super().__init__(message)
        self.step, self.last_loss = step, last_loss


def _watch_losses(coordinator, honest: list[str], steps: int, window: int, timeout: float, children):
    """Polls the coordinator until the swarm reaches ``steps``; returns (first mean honest loss, mean honest loss
    over the last ``window`` steps, step reached). Fails early if every peer exited."""
    deadline = time.monotonic() + timeout
    start_loss, final, last = float("nan"), [], float("nan")
    while True:
        try:
            step = int(coordinator.progress().get("global_step", 0))
            peers = coordinator.get("/api/v1/peers")["peers"]
        except (OSError, ValueError, KeyError) as e:  # a slow answer on a loaded machine: poll again
            logger.info("coordinator poll failed (%s); retrying", e)
            step, peers = 0, []
        # every honest peer's latest record, alive or not: on a loaded machine a peer's record may go stale for a
        # while (it is still training); a missing peer is skipped rather than waited for
        losses = [p["loss"] for p in peers if p["name"] in honest]
        losses = [float("nan") if v is None else float(v) for v in losses]
        if losses:
            mean = last = sum(losses) / len(losses)
            if math.isnan(start_loss):
                start_loss = mean
            if step >= steps - window:
                final.append(mean)
        if step >= steps and final:
            return start_loss, sum(final) / len(final), step
        if not any(c.alive() for c in children):
            tails = "\n".join(f"--- {c.name}\n{c.tail(1500)}" for c in children)
            raise RuntimeError(f"every peer exited before step {steps}:\n{tails}")
        if time.monotonic() > deadline:
            raise SwarmStalled(f"swarm at step {step}, not {steps}, after {timeout:.0f} s", step, last)
        time.sleep(1.0)


if __name__ == "__main__":
    sys.exit(attacker_main())
