"""The fault scenarios of ``bench/faults.py``: each starts real processes, injects one fault and returns table rows
(what was measured, the figure, the target, pass/fail). The fast tests call the same functions with smaller
settings, so the benchmark and the tests cannot drift apart."""

from __future__ import annotations

import logging
import re
import signal
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.faultlib.peer_state import ServedState, download_states, max_abs_diff
from bench.faultlib.procs import (
    PEER_ID,
    TRAINING,
    Coordinator,
    LogFollower,
    TinyModel,
    log_timestamp,
    prepare_run,
    start_peer,
)
from peer.children import Child, ProcessSet
from peer.config import load_config

logger = logging.getLogger(__name__)


@dataclass
class Row:
    """One line of the faults table. ``passed`` None: measured, but no target applies (context only)."""

    scenario: str
    measured: str
    figure: str
    target: str
    passed: bool | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Scenario:
    help: str
    run: Callable[[Path], list[Row]]


SCENARIOS: dict[str, Scenario] = {}


def run_scenario(name: str, work: Path) -> list[Row]:
    """Runs one scenario; a scenario that crashes is one failed row with the reason, not a lost table."""
    work.mkdir(parents=True, exist_ok=True)
    try:
        return SCENARIOS[name].run(work)
    except KeyboardInterrupt:
        raise
    except Exception as e:
        logger.exception("scenario %s crashed", name)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return [Row(name, "scenario ran to the end", f"crashed: {first[:120]}", "no crash", False)]


# --- shared helpers --------------------------------------------------------------------------------------------------

BEGIN_ROUND = re.compile(r"Beginning optimizer step #(\d+)")
ROUND_END = ("Averaged gradients with", "Averaging gradients failed", "Skipped averaging", "Transitioning to epoch")
AVERAGED = re.compile(r"Averaged gradients with (\d+) peers")
# how a gradient round of hivemind.Optimizer ends when it did not average with anyone
ALONE = ("Averaging gradients failed", "Proceeding with local gradients", "there are no other peers")
TRANSITION = re.compile(r"Transitioning to epoch (\d+)")


def peer_id_of(child: Child, timeout: float = 120.0) -> str:
    return child.wait_for_line(PEER_ID, timeout).group(1)


@contextmanager
def observer_dht(coordinator: Coordinator):
    """A client-mode DHT in this process, joined through the coordinator, for downloading peers' states."""
    import hivemind

    initial = coordinator.get("/api/v1/run")["initial_peers"]
    dht = hivemind.DHT(initial_peers=initial, client_mode=True, startup_timeout=120, start=True)
    try:
        yield dht
    finally:
        dht.shutdown()


def states_at_steps(
    coordinator: Coordinator, run_id: str, peer_ids: list[str], samples: int, attempts: int = 15
) -> list[list[ServedState]]:
    """``samples`` times, every peer's served state at one and the same global step, a later step each time:
    downloads concurrently and retries while the peers straddle a step boundary (they train on between
    downloads); ``attempts`` tries per sample."""
    taken: list[list[ServedState]] = []
    states: list[ServedState] = []
    with observer_dht(coordinator) as dht:
        while len(taken) < samples:
            for _ in range(attempts):
                states = download_states(dht, run_id, peer_ids, timeout=30)
                if (
                    len(states) == len(peer_ids)
                    and len({s.step for s in states}) == 1
                    # a stream cut short (the peer's step under way, a slow read) still has its metadata: a state
                    # with fewer tensors than the others is read again, not compared (2026-12-06: one peer's state
                    # ended inside the optimizer statistics, "largest inf", every parameter equal)
                    and len({len(s.tensors) for s in states}) == 1
                    and (not taken or taken[-1][0].step < states[0].step)
                ):
                    taken.append(states)
                    break
                time.sleep(0.5)
            else:
                steps = {s.peer_id[-6:]: f"step {s.step}, {len(s.tensors)} tensors" for s in states}
                raise RuntimeError(
                    f"could not get all {len(peer_ids)} peers' states at one step in {attempts} tries: {steps}"
                )
    return taken


# Seconds to wait for a process milestone (a peer training, a checkpoint). Minutes, not seconds: on the shared dev
# machine (load average 20-120 while these ran) a peer took up to 5 min just to import torch and hivemind.
PATIENCE = 900.0


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


# --- 1. peer SIGKILL mid-averaging, repeated -------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerKillSettings:
    peers: int = 3
    kills: int = 3
    model: TinyModel = TinyModel(target_batch_size=48)
    settle_steps: int = 2  # global steps the swarm makes after the last rejoin before the states are compared
    max_param_diff: float = 1e-6  # sync averaging, no compression: every peer applies the same averaged update
    # served states compared at this many later global steps. Why several: without any kill, on 2 shared cores,
    # a gradient round that one peer misses (it steps on its own gradients) leaves the peers ~2.4e-4 apart until
    # the next state averaging, which hivemind applies at the step after (probe, 2026-12-04: 3.7e-9 at 14 of 16
    # steps, 2.4e-4 at steps 20 and 22, 7.5e-9 at 24). One sample read such a window as the kill's doing.
    state_samples: int = 7


def describe_difference(states: list[ServedState], n_params: int, tol: float) -> str:
    """What differs between the peers' states at one step: how many parameter tensors differ by more than ``tol``,
    the optimizer's step counters per peer, and whether the optimizer's hyper-parameters (the lr) agree. Tells a
    torn or lagging read (a few tensors off, or all off by one update) from peers whose optimizers are out of step."""
    first = states[0]
    off = {
        i
        for other in states[1:]
        for i in range(min(n_params, len(first.tensors), len(other.tensors)))
        if float((first.tensors[i].float() - other.tensors[i].float()).abs().max()) > tol
    }
    counters = "; ".join(f"{s.peer_id[-6:]} {s.step_counters(n_params)}" for s in states)
    values = "equal" if all(s.optimizer_values == first.optimizer_values for s in states) else "differ"
    # which tensors (wire position and shape) and in how many elements: one part of a tensor that a round left
    # out reads differently from a whole step that one peer missed
    which = ", ".join(
        f"#{i} {tuple(first.tensors[i].shape)}: "
        f"{int(max(((first.tensors[i].float() - o.tensors[i].float()).abs() > tol).sum() for o in states[1:]))} el."
        for i in sorted(off)[:4]
    )
    return (f"{len(off)}/{n_params} parameter tensors > {tol:.0e}{' (' + which + ')' if which else ''}; "
            f"step counters {counters}; lr etc. {values}")  # fmt: skip


def kill_mid_round(victim: Child, peers: int, timeout: float, joint_rounds: int = 3) -> tuple[float, bool]:
    """Waits for the victim to log the start of an optimizer step (its gradient all-reduce follows at once) right
    after a step whose gradients it averaged with all ``peers``, once it has averaged ``joint_rounds`` such rounds
    since this call (they time the no-fault step interval), and SIGKILLs its whole session; returns (kill time,
    whether the round was still open at the kill).

    Why after a joint round: a round the others are not in is no round to kill. Two peers started together each
    stepped alone at first (neither saw the other yet), and a kill then hit a solo step while the survivor waited
    out a round of its own: a 59 s delay that was not the kill's."""
    follower = LogFollower(victim.log)
    deadline = time.monotonic() + timeout
    joint, rounds = False, 0  # whether the victim's last gradient round included every peer; how many did
    while time.monotonic() < deadline:
        for line in follower.new_lines():
            averaged = AVERAGED.search(line)
            if averaged or any(marker in line for marker in ALONE):
                joint = bool(averaged) and int(averaged.group(1)) == peers
                rounds += joint
            if BEGIN_ROUND.search(line) and joint and rounds >= joint_rounds:
                killed_at = time.time()
                victim.kill_group(signal.SIGKILL)
                after = follower.new_lines() + [follower.pending]
                return killed_at, not any(m in ln for ln in after for m in ROUND_END)
        if not victim.alive():
            raise RuntimeError(f"{victim.name} died before it was killed:\n{victim.tail()}")
        time.sleep(0.01)
    raise TimeoutError(f"{victim.name} began no optimizer step after a joint round within {timeout:.0f} s:\n"
                       f"{victim.tail()}")  # fmt: skip


def next_step_after(follower: LogFollower, child: Child, timeout: float) -> float:
    """When ``child`` was next seen (this polls its log every 0.1 s) to log a global step: call it with a follower
    drained at the kill. By the time seen, not by the line's stamp: ``peer.logs`` stamps whole seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(TRANSITION.search(line) for line in follower.new_lines()):
            return time.time()
        if not child.alive():
            raise RuntimeError(f"survivor {child.name} died:\n{child.tail()}")
        time.sleep(0.1)
    raise TimeoutError(f"survivor {child.name} made no global step within {timeout:.0f} s of the kill")


def step_intervals(child: Child, before: float, peers: int) -> list[float]:
    """Seconds between the gradient rounds ``child`` averaged with all ``peers`` before ``before``: the no-fault step
    interval. Joint rounds only: the steps a peer takes alone at the start (or catching up) come in bursts, and at
    the whole seconds ``peer.logs`` stamps, a burst reads as intervals of 0 s."""
    stamps = [log_timestamp(line) for line in child.text().splitlines()
              if (m := AVERAGED.search(line)) and int(m.group(1)) == peers]  # fmt: skip
    stamps = [s for s in stamps if s is not None and s < before]
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def peer_kill(work: Path, settings: PeerKillSettings = PeerKillSettings()) -> list[Row]:
    name = "peer SIGKILL mid-averaging"
    # no wire compression: with fp16 the peers came out 4.7e-4 apart after a kill (lr 2e-4), which fp16 rounding
    # alone may explain (not separated); without compression any difference is the fault's
    run = prepare_run(work / "run", "faults-kill", settings.model, swarm=dict(compression="none"))
    with ProcessSet(work / "procs") as procs:
        coordinator = Coordinator(procs, run, work / "data", checkpoint_every=10**6)
        coordinator.start()
        # --wait_for_peers: started together, they train together from the first round (else each steps alone at
        # first, not seeing the other yet)
        members = [start_peer(procs, f"peer{i}", coordinator, "--wait_for_peers", str(settings.peers),
                              debug_averaging=True) for i in range(settings.peers)]  # fmt: skip
        for member in members:
            member.wait_for_line(TRAINING, PATIENCE)
        coordinator.wait_for(
            "all peers alive and stepping",
            lambda p: p.get("alive_peers", 0) >= settings.peers and p.get("global_step", 0) >= 2,
            timeout=PATIENCE,
        )
        delays: list[float] = []
        baseline: list[float] = []
        inside = 0
        for k in range(settings.kills):
            victim, survivors = members[0], members[1:]
            followers = [LogFollower(s.log) for s in survivors]
            killed_at, mid_round = kill_mid_round(victim, len(members), timeout=PATIENCE)
            for follower in followers:
                follower.new_lines()  # what the survivors logged before the kill
            inside += mid_round
            logger.info("kill %d: %s SIGKILLed (%s the round)", k + 1, victim.name, "inside" if mid_round else "after")
            if k == 0:
                baseline = [i for s in survivors for i in step_intervals(s, killed_at, len(members))]
            for follower, survivor in zip(followers, survivors, strict=True):
                delays.append(next_step_after(follower, survivor, timeout=PATIENCE) - killed_at)
            newcomer = start_peer(procs, f"peer{settings.peers + k}", coordinator, debug_averaging=True)
            newcomer.wait_for_line(TRAINING, PATIENCE)
            members = [*survivors, newcomer]
        step = coordinator.progress().get("global_step", 0)
        coordinator.wait_for(
            f"{settings.settle_steps} more global steps",
            lambda p: p.get("global_step", 0) >= step + settings.settle_steps,
            timeout=PATIENCE,
        )
        ids = [peer_id_of(m) for m in members]
        samples = states_at_steps(coordinator, run.run_id, ids, samples=settings.state_samples)
    from peer.modeling import load_models

    n_params = len(load_models(run.init_dir).parameters())  # the served state starts with the parameters
    diffs = [max(max_abs_diff(states[0], s, 0, n_params) for s in states[1:]) for states in samples]
    rests = [max(max_abs_diff(states[0], s, n_params) for s in states[1:]) for states in samples]
    steps = [states[0].step for states in samples]
    finite = all(s.finite() for states in samples for s in states)
    identical = sum(d <= settings.max_param_diff for d in diffs)
    worst = max(range(len(diffs)), key=diffs.__getitem__)
    typical = median(baseline) if baseline else 0.0  # too few steps before the first kill to time one
    delay_target = load_config(run.config).swarm.averaging_timeout + 2 * typical
    return [
        Row(name, "kills that landed inside an averaging round", f"{inside}/{settings.kills}", "context", None),
        Row(
            name,
            "survivors' delay to their next global step (max of all)",
            f"{max(delays):.1f} s (median {median(delays):.1f} s; no-fault step interval {typical:.1f} s)",
            f"< averaging_timeout + 2 steps = {delay_target:.0f} s",
            bool(max(delays) < delay_target),
        ),
        Row(
            name,
            f"parameters across {len(ids)} peers at {len(steps)} steps ({steps[0]}-{steps[-1]})",
            f"median max |diff| {median(diffs):.2e}; {identical}/{len(diffs)} steps <= {settings.max_param_diff:.0e}; "
            f"largest {diffs[worst]:.2e} at step {steps[worst]}",
            f"median <= {settings.max_param_diff:.0e}",
            bool(median(diffs) <= settings.max_param_diff),
        ),
        Row(
            name,
            "optimizer statistics + extra tensors across the same peers",
            f"median max |diff| {median(rests):.2e}; largest {max(rests):.2e}",
            "context",
            None,
        ),  # fmt: skip
        Row(name, "non-finite values in any peer's state", "none" if finite else "NaN/inf found", "none", finite),
        Row(
            name,
            f"what differs at the worst step ({steps[worst]})",
            describe_difference(samples[worst], n_params, settings.max_param_diff),
            "context",
            None,
        ),
    ]


SCENARIOS["peer_kill"] = Scenario(
    "SIGKILL a peer inside an averaging round, 3 times, a new peer joining each time", peer_kill
)


# --- 2. coordinator SIGKILL mid-checkpoint ---------------------------------------------------------------------------


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


SCENARIOS["coordinator_kill"] = Scenario(
    "SIGKILL the coordinator inside a checkpoint write, 3 times, restarting it each time", coordinator_kill
)


# --- 3. every peer leaves, a new one joins ---------------------------------------------------------------------------


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


SCENARIOS["all_leave"] = Scenario("every peer leaves; a newcomer resumes from the coordinator's checkpoint", all_leave)


# --- 4. forged, malformed, oversized records -------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordSettings:
    count: int = 5  # records of each kind


REJECTED = "warmswarm_rejected_records_total"


def bad_records(work: Path, settings: RecordSettings = RecordSettings()) -> list[Row]:
    from bench.faultlib.bad_records import Attacker

    name = "forged / malformed / oversized DHT records"
    kinds = {"forged": "bad_signature", "malformed": "malformed", "oversized": "oversized"}
    run = prepare_run(work / "run", "faults-records", TinyModel())
    with ProcessSet(work / "procs") as procs:
        coordinator = Coordinator(procs, run, work / "data")
        coordinator.start()
        before = {reason: coordinator.counter(REJECTED, reason=reason) for reason in kinds.values()}
        attacker = Attacker.join(run.run_id, coordinator.get("/api/v1/run")["initial_peers"])
        try:
            for kind in kinds:
                for _ in range(settings.count):
                    getattr(attacker, kind)()
            attacker.honest()
            deadline = time.monotonic() + 60
            while True:
                counted = {r: coordinator.counter(REJECTED, reason=r) - before[r] for r in kinds.values()}
                peers = coordinator.get("/api/v1/peers")["peers"]
                if (all(v >= settings.count for v in counted.values()) and peers) or time.monotonic() > deadline:
                    break
                time.sleep(1)
        finally:
            attacker.close()
        progress = coordinator.progress()
    rows = [
        Row(name, f"{kind} records sent: rejected and counted as {reason}", f"{counted[reason]:.0f} counted",
            f">= {settings.count}", counted[reason] >= settings.count)
        for kind, reason in kinds.items()
    ]  # fmt: skip
    forged_step = progress.get("global_step", 0)
    rows.append(Row(name, "forged step 10^6 reached the coordinator's progress", f"global step {forged_step}",
                    "< 10^6", forged_step < 10**6))  # fmt: skip
    rows.append(Row(name, "control: the attacker's one well-formed record is accepted",
                    f"{len(peers)} peer(s) listed", "1", len(peers) == 1))  # fmt: skip
    return rows


SCENARIOS["bad_records"] = Scenario("forged, malformed and oversized metrics records from a hostile DHT node",
                                    bad_records)  # fmt: skip


# --- 5. attacker peers at 1 of 4 (ROBUST's bench.faultlib.attacks) --------------------------------------------------


@dataclass(frozen=True)
class AttackSettings:
    attacks: tuple[str, ...] = ("sign_flip", "random", "nan")
    peers: int = 4
    steps: int = 12
    tolerance: float = 0.05  # defences on: final loss within 5 % of the clean run's


def attacks(work: Path, settings: AttackSettings = AttackSettings()) -> list[Row]:
    """The clean run once, then every attack with defences on and off; each a real 4-peer swarm (the last peer
    attacks), scored by the honest peers' mean training loss over the last global steps (AttackResult.final_loss)."""
    import math

    from bench.faultlib.attacks import run_attack_scenario

    name = f"attacker at 1 of {settings.peers}"
    clean = run_attack_scenario(None, True, work / "clean", peers=settings.peers, steps=settings.steps)
    rows = [
        Row(
            name,
            f"clean run: honest peers' training loss at step {clean.step}",
            f"{clean.final_loss:.3f}",
            "context",
            None,
        )
    ]
    for attack in settings.attacks:
        for defences in (True, False):
            label = f"{attack}, defences {'on' if defences else 'off'}: final loss"
            try:
                result = run_attack_scenario(
                    attack, defences, work / f"{attack}-{defences}", peers=settings.peers, steps=settings.steps
                )
            except (RuntimeError, TimeoutError) as e:  # the swarm never reached the step: damage, not a bench bug
                why = str(e).splitlines()[0][:80]
                rows.append(Row(name, label, f"no checkpoint at step {settings.steps}: {why}",
                                "worse than clean" if not defences else "within tolerance", not defences))  # fmt: skip
                continue
            loss = result.final_loss
            change = (loss - clean.final_loss) / clean.final_loss if math.isfinite(loss) else math.inf
            figure = f"{loss:.3f} ({100 * change:+.1f} %)" if math.isfinite(loss) else "NaN"
            if result.banned:
                figure += f"; banned {', '.join(result.banned)}"
            if defences:
                target, passed = f"within {100 * settings.tolerance:.0f} % of clean", abs(change) <= settings.tolerance
            else:
                target, passed = f"worse than clean by > {100 * settings.tolerance:.0f} %", change > settings.tolerance
            rows.append(Row(name, label, figure, target, passed))
    return rows


SCENARIOS["attacks"] = Scenario("sign flip x1000, random x1000 and NaN attackers, defences on and off", attacks)


# --- 4b. tampered and expired access tokens (private run) ------------------------------------------------------------


@dataclass(frozen=True)
class TokenSettings:
    attempts: int = 2  # join attempts per kind of token


def bad_tokens(work: Path, settings: TokenSettings = TokenSettings()) -> list[Row]:
    """A private run (allowlist with one volunteer): a hostile node tries to join its DHT with a tampered token (a
    real one whose expiry was pushed back) and with an expired one; the control joins with a valid token got over
    HTTP with the volunteer's secret. Refusals are read back from the coordinator's ``/metrics``."""
    from hivemind.utils import get_dht_time
    from hivemind.utils.crypto import RSAPrivateKey

    from bench.faultlib.bad_tokens import tampered, try_join
    from coordinator.allowlist import add_volunteer
    from coordinator.auth import AUTHORITY_KEY_NAME
    from coordinator.signing_key import load_or_create_signing_key
    from peer.run.tokens import Credentials, request_token, sign_token

    name = "tampered / expired access tokens"
    run = prepare_run(work / "run", "faults-tokens", TinyModel())
    allowlist = work / "allowlist.tsv"
    secret = add_volunteer(allowlist, "alice")
    reasons = {"tampered": "bad_token", "expired": "expired_token"}
    with ProcessSet(work / "procs") as procs:
        coordinator = Coordinator(procs, run, work / "data", extra_args=["--allowlist", str(allowlist)])
        coordinator.start()
        initial = coordinator.get("/api/v1/run")["initial_peers"]
        key = RSAPrivateKey()
        valid = request_token(coordinator.url, Credentials.parse(f"alice:{secret}"), key.get_public_key())
        authority = load_or_create_signing_key(work / "data" / AUTHORITY_KEY_NAME)  # the organiser's key, on disk
        expired = sign_token(authority, run.run_id, "alice", key.get_public_key().to_bytes(), get_dht_time() - 60)
        before = {r: coordinator.counter(REJECTED, reason=r) for r in reasons.values()}
        joined = {
            "tampered": [try_join(initial, tampered(valid), key) for _ in range(settings.attempts)],
            "expired": [try_join(initial, expired, key) for _ in range(settings.attempts)],
        }
        control = try_join(initial, valid, key)
        deadline = time.monotonic() + 30
        while True:
            counted = {r: coordinator.counter(REJECTED, reason=r) - before[r] for r in reasons.values()}
            if all(v >= settings.attempts for v in counted.values()) or time.monotonic() > deadline:
                break
            time.sleep(1)
    rows = []
    for kind, reason in reasons.items():
        got_in = sum(a.joined for a in joined[kind])
        rows.append(Row(name, f"{kind} token: joins / refusals counted as {reason}",
                        f"{got_in}/{settings.attempts} joined, {counted[reason]:.0f} counted",
                        "0 joined, refusals counted", got_in == 0 and counted[reason] >= 1))  # fmt: skip
    rows.append(Row(name, "control: the valid token joins", "joined" if control.joined else f"refused: {control.error}",
                    "joined", control.joined))  # fmt: skip
    return rows


SCENARIOS["bad_tokens"] = Scenario("tampered and expired access tokens against a private run's DHT", bad_tokens)

SCENARIOS["attacks"] = SCENARIOS.pop("attacks")  # the long runs last in the table
