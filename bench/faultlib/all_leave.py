"""Scenario: every peer leaves (SIGTERM) and a newcomer joins an empty swarm: it must resume from the coordinator's
latest checkpoint, with exactly its parameters, and the run must go on past the step the swarm had reached."""

from __future__ import annotations

import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from bench.faultlib.harness import PATIENCE, Row
from bench.faultlib.procs import TRAINING, Coordinator, TinyModel, prepare_run, start_peer
from peer.children import ProcessSet


@dataclass(frozen=True)
class AllLeaveSettings:
    peers: int = 2
    model: TinyModel = TinyModel(target_batch_size=64)  # a lone newcomer needs 16 local steps for its first step
    min_checkpoint_step: int = 2
    # Bounds the newcomer's wait for state from peers that are gone (their averager records outlive them and
    # hivemind's download from a dead peer does not fail fast: measured, it waits out the whole timeout).
    load_state_timeout: float = 60.0
    start_target_s: float = 120.0


def saved_params_diff(params_file: Path, checkpoint: Path) -> float:
    """Largest |difference| between the parameters a peer wrote with ``--save_params`` (the training loop's order:
    ``models.parameters()``) and a checkpoint's."""
    from safetensors.torch import load_file

    from peer.modeling import load_models

    expected = load_models(checkpoint).parameters()
    got = load_file(str(params_file))
    if len(got) != len(expected):
        return float("inf")
    return max(float((got[str(i)].float() - p.detach().float()).abs().max()) for i, p in enumerate(expected))


def all_leave(work: Path, settings: AllLeaveSettings = AllLeaveSettings()) -> list[Row]:
    name = "every peer leaves, a new one joins"
    run = prepare_run(
        work / "run", "faults-leave", settings.model, swarm=dict(load_state_timeout=settings.load_state_timeout)
    )
    with ProcessSet(work / "procs") as procs:
        coordinator = Coordinator(procs, run, work / "data", checkpoint_every=settings.min_checkpoint_step)
        coordinator.start()
        members = [start_peer(procs, f"peer{i}", coordinator) for i in range(settings.peers)]
        deadline = time.monotonic() + 400
        while True:
            steps = [c["step"] for c in coordinator.get("/api/v1/checkpoints")["checkpoints"]]
            if max(steps, default=0) >= settings.min_checkpoint_step:
                break
            if time.monotonic() > deadline or not all(m.alive() for m in members):
                raise TimeoutError(f"no checkpoint at step >= {settings.min_checkpoint_step}:\n{members[0].tail()}")
            time.sleep(1)
        for member in members:
            member.proc.send_signal(signal.SIGTERM)
        codes = [member.proc.wait(120) for member in members]
        swarm_step = coordinator.progress().get("global_step", 0)
        time.sleep(2)  # a save that was under way finishes (or fails: no peer is left to pull from)
        latest = max(coordinator.get("/api/v1/checkpoints")["checkpoints"], key=lambda c: c["step"])
        # --max_steps at the checkpoint's step: the newcomer leaves as soon as it has resumed, before its first local
        # step, and writes the parameters it would have trained from: compared exactly, with no race against its
        # training (a state downloaded from a newcomer that trains on may already be one step past the checkpoint)
        params_file = work / "newcomer_params.safetensors"
        launched = time.monotonic()
        newcomer = start_peer(procs, "newcomer", coordinator, "--max_steps", str(latest["step"]),
                              "--save_params", str(params_file))  # fmt: skip
        source = newcomer.wait_for_line(re.compile(r"coordinator's checkpoint (ckpt-\d+) \(step (\d+)\)"), PATIENCE)
        start_step = int(newcomer.wait_for_line(TRAINING, PATIENCE + settings.load_state_timeout).group(1))
        start_s = time.monotonic() - launched
        codes.append(newcomer.proc.wait(PATIENCE))
        if params_file.is_file():
            diff = saved_params_diff(params_file, coordinator.data_dir / "checkpoints" / latest["name"])
            param_row = Row(name, "newcomer's parameters vs the checkpoint's", f"max |diff| {diff:.2e}", "0",
                            diff == 0.0)  # fmt: skip
        else:
            param_row = Row(name, "newcomer's parameters vs the checkpoint's", "not written", "0", False)
        # the run goes on: the next newcomer (from the same checkpoint: the first one withdrew its state) takes the
        # swarm past the last step it made before every peer left
        start_peer(procs, "newcomer2", coordinator)
        beyond = max(swarm_step, latest["step"])
        coordinator.wait_for("the swarm stepping again", lambda p: p.get("global_step", 0) > beyond, PATIENCE)
    return [
        Row(name, "exit codes: peers leaving with SIGTERM, then the newcomer at --max_steps", str(codes), "all 0",
            all(c == 0 for c in codes)),
        Row(name, "swarm's last step / coordinator's latest checkpoint",
            f"{swarm_step} / {latest['name']}", "context", None),
        Row(name, "checkpoint the newcomer started from", f"{source.group(1)}", latest["name"],
            source.group(1) == latest["name"]),
        Row(name, "newcomer's starting global step", str(start_step), str(latest["step"]),
            start_step == latest["step"]),
        Row(name, "newcomer: launch to training (incl. interpreter start)", f"{start_s:.0f} s",
            f"< {settings.start_target_s:.0f} s", start_s < settings.start_target_s),
        param_row,
    ]  # fmt: skip
