"""The demo's combined output over a run in which a peer is SIGKILLed reads as logs, not as crashes: the real
``scripts/demo.py`` (a coordinator and three peers, a tiny model so that global steps take seconds), one peer's main
process killed mid-run, the two others seen taking global steps after it, then a clean stop (SIGINT, as Ctrl-C).

What it holds the output to (issue #20): no ``Traceback``, no asyncio "Task was destroyed but it is pending!", and
every log line in the one format with a date (``2026-12-06 17:20:01 INFO name: ...``), hivemind's included."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from bench.faultlib.procs import ROOT, LogFollower, free_port, prepare_run
from peer.children import Child, ProcessSet

PREFIX = re.compile(r"^\[(coordinator|peer-\d+)\] ")
OUR_LINE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")
# a log line of any format: a level word near its start (hivemind's "[WARN]", "17:23:15 INFO", "ERROR:asyncio:"),
# or gRPC core's / glog's "I1206 17:36:09.832941 26090 fork_posix.cc:71] ..."
LEVEL_WORD = re.compile(r"\b(DEBUG|INFO|WARN|WARNING|ERROR|CRITICAL)\b")
LEVEL_WITHIN = 40  # characters: a date and a time come before the level in every format seen
GLOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")
PROGRESS = re.compile(r"\[(peer-\d+)\] .*local step \d+: global step (\d+)")
LEFT = re.compile(r"^\[(peer-\d+)\] left the swarm at global step (\d+)")
STARTED = re.compile(r"^started (peer-\d+) \(pid (\d+)\)")


class DemoOutput:
    """The demo's stdout+stderr, read line by line from its log file; tests wait on what has been seen so far."""

    def __init__(self, demo: Child) -> None:
        self.demo = demo
        self.lines: list[str] = []
        self._log = LogFollower(demo.log, from_end=False)

    def read(self) -> list[str]:
        self.lines += self._log.new_lines()
        return self.lines

    def wait_for(self, predicate, timeout: float, what: str):
        """The first non-None ``predicate(lines)`` within ``timeout`` seconds; fails at once if the demo exits."""
        return self.demo.wait_until(lambda: predicate(self.read()), timeout, f"not seen: {what}")


def global_steps(lines: list[str]) -> dict[str, int]:
    """Each peer's highest global step in its progress lines."""
    steps: dict[str, int] = {}
    for line in lines:
        if m := PROGRESS.search(line):
            steps[m[1]] = max(steps.get(m[1], -1), int(m[2]))
    return steps


def started_peers(lines: list[str]) -> dict[str, int]:
    """The peers' main pids, as the demo prints them."""
    return {m[1]: int(m[2]) for line in lines if (m := STARTED.match(line))}


def log_format_problems(lines: list[str]) -> list[str]:
    """Lines of a child's output that are log lines of another format (no date, hivemind's own, basicConfig's)."""
    problems = []
    for line in lines:
        body = PREFIX.sub("", line)
        foreign = LEVEL_WORD.search(body[:LEVEL_WITHIN]) or GLOG.match(body)
        if body != line and foreign and not OUR_LINE.match(body):
            problems.append(line)
    return problems


def tiny_demo_config(root: Path) -> tuple[Path, Path]:
    """The demo's config with a tiny model (bench.faultlib.procs.prepare_run) and a progress line every 5 local
    steps (the demo's log_every of 1 is for its large model, whose steps take seconds)."""
    run = prepare_run(root, "demo-logs")
    cfg = yaml.safe_load(run.config.read_text())
    cfg["train"]["log_every"] = 5
    run.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return run.config, run.init_dir


def test_log_format_check_catches_foreign_lines():
    """The format check itself: the three formats the demo printed before (basicConfig's time-only lines,
    hivemind's own handler, asyncio through the root logger) are caught; ours and plain prints are not."""
    bad = [
        "[peer-1] 17:23:15 INFO peer.swarm.dht: DHT started",
        "[peer-1] Dec 06 17:23:22.852 [WARN] [hivemind.averaging.matchmaking.__init__:54] It is recommended",
        "[peer-2] ERROR:asyncio:Task was destroyed but it is pending!",
        "[coordinator] I1206 17:36:09.832941   26090 fork_posix.cc:71] Other threads are currently calling into gRPC",
    ]
    good = [
        "[peer-1] 2026-12-06 17:23:15 INFO peer.swarm.dht: DHT started",
        "[peer-1] 2026-12-06 17:23:22 WARNING hivemind.averaging.averager: averaging round found no group",
        "[peer-1] left the swarm at global step 3: 40 local steps, 160 samples, last loss 9.1",
        "[coordinator]   python -m peer join --coordinator http://127.0.0.1:8080",
        "started peer-2 (pid 123)",
    ]
    assert log_format_problems(bad + good) == bad


def swarm_progress(url: str) -> dict | None:
    """The coordinator's ``/api/v1/progress`` (global step, alive peers), or None while it does not answer."""
    try:
        with urllib.request.urlopen(f"{url}/api/v1/progress", timeout=5) as response:
            return json.load(response)
    except OSError:
        return None


def wait_until(check, timeout: float, what: str, output: DemoOutput):
    """Polls ``check()`` until it returns something other than None."""
    deadline = time.monotonic() + timeout
    while (found := check()) is None:
        if time.monotonic() > deadline:
            tail = "\n".join(output.read()[-40:])
            raise AssertionError(f"not within {timeout:.0f} s: {what}\n--- last lines ---\n{tail}")
        time.sleep(1.0)
    return found


def swarm_at(url: str, step: int, alive: int) -> int | None:
    """The global step once it is at least ``step`` with at least ``alive`` peers seen by the coordinator."""
    progress = swarm_progress(url)
    ok = progress is not None and progress["global_step"] >= step and progress["alive_peers"] >= alive
    return progress["global_step"] if ok else None


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_with_a_killed_peer_prints_no_traceback(tmp_path):
    config, init_dir = tiny_demo_config(tmp_path / "run")
    ports = {name: free_port() for name in ("http", "grpc", "dht")}
    url = f"http://127.0.0.1:{ports['http']}"
    cmd = [sys.executable, str(ROOT / "scripts" / "demo.py"), "-c", str(config), "--init_from", str(init_dir)]
    cmd += ["--data_dir", str(tmp_path / "data"), "--peers", "3", "--checkpoint_every", "3"]
    cmd += [arg for name, port in ports.items() for arg in (f"--{name}_port", str(port))]
    # leaving the set early (a failed wait) SIGKILLs the demo and the sessions of its coordinator and peers
    with ProcessSet(tmp_path, grace=0) as procs:
        demo = procs.start("demo", cmd, env={"PYTHONUNBUFFERED": "1"}, cwd=ROOT)  # output to tmp_path/demo.log
        output = DemoOutput(demo)
        pids = output.wait_for(
            lambda lines: pids if len(pids := started_peers(lines)) == 3 else None, 240, "the three peers started"
        )
        at_kill = wait_until(lambda: swarm_at(url, 2, 3), 240, "three peers at global step 2", output)
        os.kill(pids["peer-3"], signal.SIGKILL)  # the main process only, as an OOM kill does
        output.wait_for(
            lambda lines: any("peer-3 exited with code -9" in x for x in lines) or None, 30, "the demo saying so"
        )
        goal = at_kill + 3
        wait_until(lambda: swarm_at(url, goal, 1), 240, f"global step {goal} (peer-3 killed at {at_kill})", output)
        # and each survivor has said it went on: the swarm's step can move on through one survivor while the other
        # is still in a round with the killed peer (averaging_timeout), and a Ctrl-C then raced its progress line
        # (one full run of 4, 2026-12-06: peer-2's last line at the kill's step, 12 s before the Ctrl-C)
        output.wait_for(
            lambda lines: all(global_steps(lines).get(s, -1) > at_kill for s in ("peer-1", "peer-2")) or None,
            240,
            f"a progress line past global step {at_kill} from each survivor",
        )
        demo.proc.send_signal(signal.SIGINT)  # Ctrl-C: the demo stops every child cleanly
        assert demo.proc.wait(timeout=120) == 0
    lines = output.read()
    text = "\n".join(lines)
    assert any(line.startswith("demo stopped after") for line in lines), text[-3000:]
    tracebacks = [i for i, line in enumerate(lines) if "Traceback" in line]
    assert not tracebacks, f"{len(tracebacks)} tracebacks, the first:\n" + "\n".join(
        lines[tracebacks[0] : tracebacks[0] + 30]
    )
    assert "Task was destroyed" not in text
    problems = log_format_problems(lines)
    assert not problems, f"{len(problems)} log lines not in the dated format, e.g.:\n" + "\n".join(problems[:10])
    # the survivors went on after the kill and said so in progress lines; their summaries reached the output (a peer
    # still finishing a round with the killed one when the demo's grace (90 s) ran out is killed, and the demo says so)
    for survivor in ("peer-1", "peer-2"):
        assert global_steps(lines).get(survivor, -1) >= at_kill + 1, f"no progress lines of {survivor} after the kill"
        left = [int(m[2]) for line in lines if (m := LEFT.match(line)) and m[1] == survivor]
        killed = f"{survivor} did not stop within 90 s of SIGINT: killing it" in lines
        assert killed or (left and left[0] >= at_kill + 1), text[-3000:]
    assert any(LEFT.match(line) for line in lines), text[-3000:]
