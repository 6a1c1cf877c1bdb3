"""Real multi-process swarms on loopback: real p2pd daemons, real hivemind averaging, the real training loop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from peer.children import Child, ProcessSet, process_name, session_pids

REPO = Path(__file__).resolve().parents[3]
PEER = Path(__file__).with_name("swarm_peer_proc.py")


class Swarm:
    """Peer processes (peer.children), each logging to ``<root>/<name>/log.txt``; at the end every one still running
    is killed with its p2pd (SIGKILL at once: a peer still in a round would only delay the next test)."""

    def __init__(self, procs: ProcessSet) -> None:
        self.procs = procs

    def start(self, name: str, mode: str, initial: list[str], **env: str) -> tuple[Child, Path]:
        out = self.procs.work / name
        out.mkdir()
        child = self.procs.start(
            name,
            [sys.executable, str(PEER), str(out), mode, *initial],
            env=dict(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", VERBOSE="1", **env),
            cwd=REPO,
            log=out / "log.txt",
        )
        return child, out

    def wait_maddrs(self, peer: Child, timeout: float = 90) -> list[str]:
        return read_json_when(peer.log.with_name("maddrs.json"), peer, timeout)


@pytest.fixture
def swarm(tmp_path):
    with ProcessSet(tmp_path, grace=0) as procs:
        yield Swarm(procs)


def wait_ok(peer: Child, out: Path, timeout: float = 180) -> dict:
    try:
        rc = peer.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"peer hung: {peer.tail()}") from None
    assert rc == 0, peer.tail()
    return torch.load(out / "result.pt")


def max_diff(a: dict, b: dict) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a["params"], b["params"], strict=True))


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode,compression,tol", [("sync", "none", 1e-6), ("diloco", "fp16", 2e-3)])
def test_peers_take_global_steps_and_end_equal(swarm, mode, compression, tol):
    """diloco runs with the default 8-bit outer momentum (minmax8bit): with hivemind's clamping codec in the
    reducer's reply the two peers ended 0.035 apart, momenta 0.1 apart (fails the 2e-3 tolerance)."""
    env = dict(STEPS="3", TARGET="96", STEP_SLEEP="0.2", MIN_PEERS="2", COMPRESSION=compression)
    diffs = []
    # One bounded retry: on 2 shared cores a peer occasionally misses the last diloco round (matchmaking under load),
    # after which the two finish one local round apart (seen once in the full runs of 2026-11-23); two misses fail.
    for attempt in range(2):
        a, out_a = swarm.start(f"a{attempt}", mode, [], PEER_SEED="1", **env)
        b, out_b = swarm.start(f"b{attempt}", mode, swarm.wait_maddrs(a), PEER_SEED="2", **env)
        ra, rb = wait_ok(a, out_a), wait_ok(b, out_b)
        assert ra["step"] >= 3 and rb["step"] >= 3
        # the peers saw different data (PEER_SEED), so equal parameters mean they averaged every round
        assert ra["samples"] > 0 and rb["samples"] > 0
        assert all(torch.isfinite(p).all() for p in ra["params"])
        diffs.append(max_diff(ra, rb))
        if diffs[-1] <= tol:
            break
    assert diffs[-1] <= tol, f"parameters differ after every attempt: {diffs}"


def adam_travel(steps: int, lr: float = 0.05) -> float:
    """How far torch's Adam moves a parameter whose gradient is always 1 in ``steps`` steps, after hivemind's
    zero-gradient step that creates the statistics (``initialize_optimizer_state_``)."""
    x = torch.nn.Parameter(torch.zeros(1))
    adam = torch.optim.Adam([x], lr=lr)
    x.grad = torch.zeros(1)
    adam.step()
    for _ in range(steps):
        x.grad = torch.ones(1)
        adam.step()
    return -x.item()


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("delay_step", ["0", "1"], ids=["step_inline", "delay_optimizer_step"])
def test_sync_state_rounds_never_undo_an_optimizer_step(swarm, delay_step):
    """Every optimizer step takes effect and the peers end equal, with hivemind averaging the state in the
    background in every epoch, the global step inline or (``delay_optimizer_step``) in hivemind's executor.

    The loss is the sum of the parameters (LOSS=sum): every gradient is 1, so after k Adam steps each parameter has
    moved by exactly what one Adam alone moves it in k steps, and a step undone shows as a parameter about lr
    short. What this guards: before ``GuardedOptimizer`` applied state rounds by the delta rule, hivemind copied a
    round's result (the state of the epoch it began in) over the step taken while it ran (the peer_kill fault
    scenario: 10 of 13 rounds, each peer by its own timing). With epochs of 0.4 s (TARGET 64, STEP_SLEEP 0.05) this
    test failed on that code (a parameter 0.0085 off after 9 steps), but at that pace one peer often stepped alone
    at the start and then jumped an epoch (below), so it could not run in CI; at this pace the old code passed it
    too. The race itself is left to the peer_kill scenario (tests/faults), which failed 3 of 9 runs before the fix.
    A second race, here (step_inline 2-3 runs in 6): a round that paired one peer's epoch-e round with the other's
    epoch-(e+1) one averaged snapshots a step apart (a peer half an Adam step off); such rounds are now applied by
    neither (``GuardedStateAverager._round_applies``, pinned by tests/peer/swarm/test_mixed_epoch_rounds.py).
    A third cause, not a race of state rounds (delay_optimizer_step, 1 full run in about 6, under CI load): peer a
    came to global step 10 with no samples of its own (peer b had filled the batch while a's previous gradient
    round still ran), its gradient round found no group, and hivemind went on "with local gradients", which for
    no samples are zeros: a's tenth Adam step ran on a zero gradient (0.0054 short), and the last state round split
    that between the peers: both ended 0.00268 short, as measured. A peer stepping on its own gradients is
    hivemind's rule for a failed round, not what this test is about, so such an attempt is run again too.
    (Rounds that leave parts out, "received 50.0% of input tensors", seen in that run, do not by themselves:
    with a 2 ms chunk timeout every round of both kinds was partial and the travel was exact.)"""
    env = dict(STEPS="10", TARGET="96", STEP_SLEEP="0.2", MIN_PEERS="2", LOSS="sum", OPT="adam", DELAY_STEP=delay_step)
    # The travel is one Adam's only while both peers step together: a peer that misses a round at the start (seen in
    # a full run: hivemind's InvalidStateError on a cancelled first round) jumps an epoch by hivemind's catch-up,
    # and the state rounds then mix Adam moments of two step counts. Such a run shows nothing about undone steps: it
    # is run again, once, and a second one fails.
    for attempt in range(2):
        a, out_a = swarm.start(f"a{attempt}", "sync", [], PEER_SEED="1", EXTRA_PARAMS="1000000", **env)
        initial = swarm.wait_maddrs(a)
        b, out_b = swarm.start(f"b{attempt}", "sync", initial, PEER_SEED="2", EXTRA_PARAMS="1000000", **env)
        # 400 s, not wait_ok's 180: with delay_optimizer_step a global step here takes 17-21 s (about 10 s in hivemind's
        # "Waiting for delayed updates to finish", then the gradient round), so 10 steps plus start-up passed 180 s
        # under CI load while the peers were still stepping (epoch 9 of 10, logged "peer hung")
        results = {"a": wait_ok(a, out_a, 400), "b": wait_ok(b, out_b, 400)}
        together = {name: (r["optimizer_steps"], r["step"]) for name, r in results.items()}
        alone = {name: log_count(out, "Proceeding with local gradients") for name, out in (("a", out_a), ("b", out_b))}
        if all(steps == epoch for steps, epoch in together.values()) and not any(alone.values()):
            break
    assert all(steps == epoch for steps, epoch in together.values()), f"(own steps, epoch) twice: {together}"
    assert not any(alone.values()), f"global steps on a peer's own gradients (a failed round), twice: {alone}"
    for name, out in (("a", out_a), ("b", out_b)):
        r, steps = results[name], results[name]["optimizer_steps"]
        assert log_count(out, "Averaged parameters with 2 peers") >= 2, f"{name}: too few state rounds to show it"
        assert steps >= 5, f"{name}: {steps} optimizer steps"
        travel = adam_travel(steps)
        pairs = zip(r["initial"], r["params"], strict=True)
        worst = max((start - end - travel).abs().max().item() for start, end in pairs)
        assert worst < 1e-3, f"{name}: parameters {worst:.4f} off the travel of its {steps} Adam steps ({travel:.4f})"
    assert max_diff(results["a"], results["b"]) <= 1e-6


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_overlapped_diloco_rounds_make_the_anchors_equal_while_peers_keep_training(swarm):
    """diloco with the outer round in the background (peer.swarm.overlap): each peer keeps its own steps taken
    during a round, so parameters differ by those; the anchors (the rounds' outcome) must be equal within fp16, and
    so must the outer momenta, which are not sent (momentum_sync catch_up, the default here): each peer updates its
    own from the same averaged parameters."""
    two_overlapped_diloco_peers(swarm, "fp16", tol=2e-3)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_diloco_peers_sending_4bit_pseudo_gradients_with_error_feedback_end_with_equal_anchors(swarm):
    """compression: blockwise4bit: the background rounds average 4-bit pseudo-gradients with error feedback
    (peer.swarm.feedback) and the reducer replies with the average itself (peer.swarm.overrides.allreduce), so both
    peers apply the same update each round: anchors and momenta equal up to float rounding (measured 6e-8 apart,
    residuals up to 0.03, the anchor 1.3 from its start). With hivemind's reply (``average - part`` in 4 bits) the
    anchors ended 0.048 and 0.049 apart (two attempts of one run), which fails the 1e-5 here."""
    # a catch-up resets the residual and copies a state: an attempt with one does not count
    ra, rb = two_overlapped_diloco_peers(swarm, "blockwise4bit", tol=1e-5, without_catch_up=True)
    moved = max((x - y).abs().max().item() for x, y in zip(ra["anchor"], ra["initial"], strict=True))
    assert moved > 1e-2, f"the anchor hardly moved ({moved}): nothing was averaged"
    for r in (ra, rb):
        assert max(t.abs().max().item() for t in r["residual"]) > 0, "no error feedback was kept"


def tensors_diff(a: dict, b: dict, key: str) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a[key], b[key], strict=True))


def two_overlapped_diloco_peers(swarm, compression: str, tol: float, without_catch_up: bool = False):
    """Two diloco peers with the outer round in the background, 3 global steps: asserts that both took them with
    finite parameters, that at least 2 rounds were averaged and that the anchors and momenta end within ``tol``;
    returns both results. One bounded retry, as in the first test: a round missed under load on 2 shared cores (and
    an attempt with a catch-up, if ``without_catch_up``).

    A global step (20 local steps each) outlasts a round (2 s of matchmaking): rounds that outlast global steps meet
    rounds of other epochs, which are dropped (peer.swarm.overlap)."""
    env = dict(STEPS="3", TARGET="320", STEP_SLEEP="0.2", MIN_PEERS="2", COMPRESSION=compression, OVERLAP="1")
    env["MATCHMAKING"] = "2"
    diffs = []
    for attempt in range(2):
        a, out_a = swarm.start(f"a{attempt}", "diloco", [], PEER_SEED="1", **env)
        b, out_b = swarm.start(f"b{attempt}", "diloco", swarm.wait_maddrs(a), PEER_SEED="2", **env)
        ra, rb = wait_ok(a, out_a), wait_ok(b, out_b)
        assert ra["step"] >= 3 and rb["step"] >= 3
        assert all(torch.isfinite(p).all() for p in ra["params"] + rb["params"])
        averaged = min(ra["rounds_averaged"], rb["rounds_averaged"])
        clean = not without_catch_up or ra["catch_ups"] == rb["catch_ups"] == 0
        diffs.append(max(tensors_diff(ra, rb, "anchor"), tensors_diff(ra, rb, "momentum")))
        if averaged >= 2 and clean and diffs[-1] <= tol:
            break
    assert averaged >= 2, f"the background rounds found no group: {ra['rounds_averaged']}, {rb['rounds_averaged']}"
    assert diffs[-1] <= tol, f"anchors or momenta differ after every attempt: {diffs}"
    return ra, rb


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_peer_that_misses_an_overlapped_round_loads_a_state_where_it_landed(swarm):
    """momentum_sync catch_up: the outer momentum is not averaged, so a peer whose round failed while the others
    averaged would go on with its own momentum and anchor (the others' rounds differ from its own). Three peers; c
    gives its round of epoch 2 up at once (MISS_ROUND); c must then load the state of a peer where round 2 landed, and
    end with the others' anchor and momentum. Without the catch-up c's momentum stays off by its own round-2
    pseudo-gradient minus the swarm's, decaying 0.9x per round."""
    env = dict(STEPS="4", TARGET="480", STEP_SLEEP="0.2", MIN_PEERS="3", COMPRESSION="fp16", OVERLAP="1", LINGER="15")
    env["MATCHMAKING"] = "2"  # a global step (20 local steps each) outlasts a round, as above
    diffs = []
    for attempt in range(2):  # one bounded retry: under load on 2 shared cores a or b may miss a round too
        a, out_a = swarm.start(f"a{attempt}", "diloco", [], PEER_SEED="1", **env)
        first = swarm.wait_maddrs(a)
        b, out_b = swarm.start(f"b{attempt}", "diloco", first, PEER_SEED="2", **env)
        c, out_c = swarm.start(f"c{attempt}", "diloco", first, PEER_SEED="3", MISS_ROUND="2", **env)
        ra, rb, rc = wait_ok(a, out_a, 400), wait_ok(b, out_b, 400), wait_ok(c, out_c, 400)
        assert all(torch.isfinite(p).all() for r in (ra, rb, rc) for p in r["params"])
        assert rc["catch_ups"] >= 1, (out_c / "log.txt").read_text()[-3000:]
        # a state loaded: split over donors (peer.swarm.overrides.state_parts) or, its fallback, hivemind's whole
        loaded = log_count(out_c, "downloaded the state from") + log_count(out_c, "Finished downloading state")
        diffs.append(max(tensors_diff(rc, r, key) for r in (ra, rb) for key in ("anchor", "momentum")))
        clean = ra["catch_ups"] == rb["catch_ups"] == 0 and loaded >= 1
        if clean and diffs[-1] <= 2e-3:
            break
    assert loaded >= 1, f"c never loaded a state after its missed round: {(out_c / 'log.txt').read_text()[-3000:]}"
    assert diffs[-1] <= 2e-3, f"c's anchor or momentum differs from the others' after every attempt: {diffs}"


def read_json_when(path: Path, peer: Child, timeout: float) -> dict:
    """The JSON file the peer writes, once it is there (a half-written file counts as not yet)."""

    def found() -> dict | None:
        return json.loads(path.read_text()) if path.is_file() else None

    return peer.wait_until(found, timeout, f"no {path.name}", retry_on=(ValueError,), every=0.2)


def log_count(out: Path, text: str) -> int:
    return (out / "log.txt").read_text().count(text)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_kill9_mid_round_then_late_joiner_gets_state_and_contributes(swarm):
    """Three peers average; one is killed -9 while a round is in flight; the two others go on to take their next
    global step within two rounds, with finite parameters; then a late joiner downloads the state and takes part in
    the next rounds; SIGTERM ends the survivors cleanly."""
    env = dict(TARGET="96", STEP_SLEEP="0.2", MIN_PEERS="3", COMPRESSION="none", STEPS="1000")
    a, out_a = swarm.start("a", "sync", [], PEER_SEED="1", **env)
    boot = swarm.wait_maddrs(a)
    b, out_b = swarm.start("b", "sync", boot, PEER_SEED="2", **env)
    c, out_c = swarm.start("c", "sync", boot, PEER_SEED="3", **env)
    # kill c while it is inside an averaging round (hivemind logs the round's start at verbose level)
    deadline = time.monotonic() + 180
    while log_count(out_c, "Beginning optimizer step #1") == 0:
        assert time.monotonic() < deadline and c.alive(), c.tail()
        time.sleep(0.05)
    c.kill_group(signal.SIGKILL)
    # a round is bounded by matchmaking (4 s) + averaging_timeout (30 s) in swarm_peer_proc
    steps_before = [log_count(out, "Transitioning to epoch") for out in (out_a, out_b)]
    deadline = time.monotonic() + 2 * (4 + 30)
    while not all(
        log_count(out, "Transitioning to epoch") > n for out, n in zip((out_a, out_b), steps_before, strict=True)
    ):
        assert time.monotonic() < deadline, "survivors did not take a global step within two rounds of the kill"
        time.sleep(0.2)
    d, out_d = swarm.start(
        "d", "sync", boot, PEER_SEED="4", LOAD_STATE="1", EXTRA_STEPS="2", **env | {"MIN_PEERS": "1"}
    )
    loaded = read_json_when(out_d / "loaded.json", d, 180)
    assert loaded["step"] >= 2  # the step came with the downloaded state
    rd = wait_ok(d, out_d, 240)
    assert rd["step"] >= loaded["step"] + 2 and rd["samples"] > 0
    assert log_count(out_d, "Averaged gradients with") >= 1  # the joiner's gradients went into a swarm round
    for proc, out in ((a, out_a), (b, out_b)):
        result = stop_with_sigterm(proc, out)
        assert result["step"] >= rd["step"] - 1
        assert all(torch.isfinite(p).all() for p in result["params"])
    assert all(torch.isfinite(p).all() for p in rd["params"])


def stop_with_sigterm(peer: Child, out: Path) -> dict:
    """SIGTERM: the peer finishes its step, leaves, exits 0, and leaves no p2pd behind in its session."""
    peer.proc.send_signal(signal.SIGTERM)
    assert peer.proc.wait(90) == 0, peer.tail()
    time.sleep(1.0)
    left = session_pids(peer.pid)
    assert left == [], f"p2pd or helpers left behind after SIGTERM: {[process_name(p) for p in left]}"
    return torch.load(out / "result.pt")
