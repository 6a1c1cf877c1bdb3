"""Scenario: the coordinator SIGKILLed inside a checkpoint write, repeatedly, restarted each time; no half or
corrupt checkpoint may be visible afterwards, no history lost, and a newer checkpoint must follow each restart."""

from __future__ import annotations

import logging
import re
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.faultlib.harness import PATIENCE, Row, median, peer_id_of
from bench.faultlib.procs import TRAINING, Coordinator, TinyModel, prepare_run, start_peer
from peer.children import Child, ProcessSet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoordinatorKillSettings:
    kills: int = 3
    # ~50 MB of safetensors, so that a save takes long enough on disk to be killed inside it
    model: TinyModel = TinyModel(hidden_size=256, num_layers=4, num_heads=4, ffn_size=1024, target_batch_size=16)
    peers: int = 2
    # seconds for each wait (peers training, a write to kill, a checkpoint after the restart): a test sets it so
    # that the waits end inside its own timeout and their error, with the processes' logs, is what it reports
    patience: float = PATIENCE


def kill_inside_save(
    coordinator: Coordinator, root: Path, timeout: float, members: Sequence[Child] = ()
) -> tuple[str, list[str]]:
    """Polls the checkpoints dir every 2 ms; as soon as a ``ckpt-*.tmp`` holds a file but no manifest yet (the
    write is under way), SIGKILLs the coordinator's session. Returns the tmp dir's name and what it held; on
    timeout, the error holds the coordinator's and the peers' last log lines (why no write began)."""
    deadline, next_check = time.monotonic() + timeout, time.monotonic()
    while time.monotonic() < deadline:
        for tmp in root.glob("ckpt-*.tmp"):
            try:
                files = sorted(p.name for p in tmp.iterdir())
            except OSError:
                continue
            if files and "manifest.json" not in files:
                coordinator.child.kill_group(signal.SIGKILL)
                try:
                    held = sorted(f"{p.name} ({p.stat().st_size} B)" for p in tmp.iterdir())
                except OSError:
                    held = files
                return tmp.name, held
        if not coordinator.child.alive():
            raise RuntimeError(f"coordinator died on its own:\n{coordinator.child.tail()}")
        if time.monotonic() >= next_check:  # a peer that died makes no more steps: no checkpoint would ever be due
            next_check = time.monotonic() + 1.0
            for member in members:
                if not member.alive():
                    raise RuntimeError(f"{member.name} died before a checkpoint write began:\n{member.tail()}")
        time.sleep(0.002)
    tails = "".join(f"\n--- {m.name} ---\n{m.tail()}" for m in members)
    raise TimeoutError(f"no checkpoint write began within {timeout:.0f} s:\n--- coordinator ---\n"
                       f"{coordinator.child.tail()}{tails}")  # fmt: skip


def audit_checkpoints(
    root: Path, list_checkpoints: Callable[[], list[str]], killed: set[str]
) -> tuple[list[str], list[str], list[str]]:
    """(half writes still visible, checkpoints that fail verification, differences from the API's list), while the
    coordinator keeps saving and pruning.

    Why not one read of each: the disk and the API are two reads at two moments, and a save or a prune that lands
    between them is no fault (seen: ckpt-000021 saved and ckpt-000000 pruned in the same second, between the API's
    list and the disk scan, counted as one "unlisted" checkpoint). So the API is read before and after the scan and
    only a difference from both counts; a live write's ``.tmp`` is not a half write, only a killed one (``killed``)
    still there or a ``.corrupt`` is; a checkpoint that fails verification because it was pruned meanwhile is gone,
    not corrupt."""
    from coordinator.checkpoints import verify_checkpoint
    from peer.run.checkpoint_manifest import CorruptCheckpoint

    before = set(list_checkpoints())
    leftovers = sorted(p.name for p in root.iterdir() if p.name.endswith(".corrupt") or p.name in killed)
    bad = []
    on_disk = sorted(p.name for p in root.iterdir() if p.is_dir() and re.fullmatch(r"ckpt-\d+", p.name))
    for name in on_disk:
        try:
            verify_checkpoint(root / name)
        except (CorruptCheckpoint, OSError) as e:
            if (root / name).exists():
                bad.append(str(e))
    after = set(list_checkpoints())
    mismatch = sorted((set(on_disk) ^ before) & (set(on_disk) ^ after))
    return leftovers, bad, mismatch


def coordinator_kill(work: Path, settings: CoordinatorKillSettings = CoordinatorKillSettings()) -> list[Row]:
    name = "coordinator SIGKILL mid-checkpoint"
    run = prepare_run(work / "run", "faults-ckpt", settings.model)
    root = work / "data" / "checkpoints"
    inside, leftovers, corrupt, mismatched, history_lost, resumed, resume_s = 0, [], [], [], 0, 0, []
    held_at_kill: list[str] = []
    unknown = 0  # peers a restarted coordinator would not dial: they are not in its known_peers.json
    with ProcessSet(work / "procs") as procs:
        coordinator = Coordinator(procs, run, work / "data", checkpoint_every=2, keep_last=3)
        coordinator.start()
        members = [start_peer(procs, f"peer{i}", coordinator) for i in range(settings.peers)]
        for member in members:
            member.wait_for_line(TRAINING, settings.patience)
        killed: set[str] = set()  # the names of the writes the kills interrupted

        def listed_by_api() -> list[str]:
            return [c["name"] for c in coordinator.get("/api/v1/checkpoints")["checkpoints"]]

        for k in range(settings.kills):
            history = coordinator.get("/api/v1/history")["history"]
            tmp, held = kill_inside_save(coordinator, root, timeout=settings.patience, members=members)
            inside += 1
            held_at_kill = held
            logger.info("kill %d: coordinator SIGKILLed while writing %s holding %s", k + 1, tmp, held)
            known = work / "data" / "known_peers.json"
            unknown += sum(peer_id_of(m) not in (known.read_text() if known.is_file() else "") for m in members)
            before = {p.name for p in root.iterdir() if re.fullmatch(r"ckpt-\d+", p.name)}
            restarted = time.monotonic()
            coordinator.start()
            killed.add(tmp)
            left, bad, mismatch = audit_checkpoints(root, listed_by_api, killed)
            leftovers += left
            corrupt += bad
            mismatched += mismatch
            after = coordinator.get("/api/v1/history")["history"]
            kept = {(h["time"], h["step"]) for h in after}
            history_lost += sum((h["time"], h["step"]) not in kept for h in history)
            # the run goes on: a checkpoint newer than every one from before the kill is saved and verifies
            newest = max((int(n.split("-")[1]) for n in before), default=-1)
            deadline = time.monotonic() + settings.patience
            while time.monotonic() < deadline:
                names = [c["name"] for c in coordinator.get("/api/v1/checkpoints")["checkpoints"]]
                if any(int(n.split("-")[1]) > newest for n in names):
                    resumed += 1
                    resume_s.append(time.monotonic() - restarted)
                    break
                time.sleep(1)
        left, bad, mismatch = audit_checkpoints(root, listed_by_api, killed)
    n = settings.kills
    return [
        Row(name, "kills inside a checkpoint write (tmp dir with files, no manifest)", f"{inside}/{n}",
            f"{n}/{n}", inside == n),
        Row(name, "what the last killed write had on disk", ", ".join(held_at_kill)[:100], "context", None),
        Row(name, "half/corrupt checkpoints visible after restart (tmp, corrupt, unverifiable, unlisted)",
            str(len(leftovers) + len(corrupt) + len(mismatched) + len(left) + len(bad) + len(mismatch)), "0",
            not (leftovers or corrupt or mismatched or left or bad or mismatch)),
        Row(name, "SQLite history rows lost across restarts", str(history_lost), "0", history_lost == 0),
        Row(name, "peers missing from known_peers.json at the kills (the restart dials only those listed)",
            str(unknown), "0", unknown == 0),
        Row(name, "restarts followed by a newer verified checkpoint",
            f"{resumed}/{n} (median {median(resume_s):.0f} s after restart)", f"{n}/{n}", resumed == n),
    ]  # fmt: skip
