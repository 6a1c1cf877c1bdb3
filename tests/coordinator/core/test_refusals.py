"""Bad input gets one clear line and exit 2, early, and nothing written (issue #20), shown on real processes:

- ``coordinator start`` on a busy port (held by a running coordinator), a ``--data_dir`` that is a file or not
  writable, a ``--host`` that is not this machine's, two flags on one port: refused in seconds, before any growth,
  checkpoint, SQLite file or identity is written;
- every client of the coordinator's HTTP API (``peer join --coordinator``, ``coordinator status``, ``coordinator
  download --from``) pointed at an HTTP server that is not a coordinator: "... is not a warmswarm coordinator ...";
  ``download --out`` a file;
- ``coordinator status`` of a run with no live peer (no loss, no ETA yet) prints the status, exit 0.
"""

import json
import os
import resource
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.coordinator.core.coordinator_proc import Coordinator, coordinator_cli, run_cli, write_tiny_model

RUN = "refusals-test"
CONFIG = f"""
run_id: {RUN}
model: {{hidden_size: 32, num_layers: 2, num_heads: 2, ffn_size: 64, max_position_embeddings: 64}}
train: {{total_steps: 1000}}
"""
# "Fails fast": a refusal costs the interpreter and its imports, no growth, copy or server start. Measured in CPU
# seconds of the refused process (~3 s, mostly importing torch and hivemind), which a loaded machine stretches in
# wall time (~35 s seen at load 19 on 2 cores) but not in CPU time; the wall-clock bound is the minute.
FAST_CPU_S = 15.0
FAST_WALL_S = 60.0

# How HTTP servers that are not a coordinator answer; the first path segment of the URL picks one.
NOT_A_COORDINATOR = {
    "json": (200, "application/json", json.dumps({"status": "ok", "items": []})),
    "html": (200, "text/html", "<!doctype html><html><body><h1>It works!</h1></body></html>"),
    "missing": (404, "application/json", json.dumps({"detail": "Not Found"})),
    "schema": (  # every expected field, none of the expected types
        200,
        "application/json",
        json.dumps(
            {
                "run_id": 7,
                "config": "x",
                "initial_peers": 3,
                "global_step": "many",
                "alive_peers": None,
                "samples_per_second": [],
                "peers": {"a": 1},
                "checkpoints": [{"name": 1}],
            }
        ),
    ),
}


class _NotACoordinatorHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        status, content_type, body = NOT_A_COORDINATOR[self.path.strip("/").split("/")[0]]
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def other_server():
    """An HTTP server on loopback that answers JSON, HTML or 404 but is no coordinator; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotACoordinatorHandler)
    thread = threading.Thread(target=server.serve_forever, name="not-a-coordinator", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "run.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def start_args(config_file, tiny_model_dir):
    """``coordinator start`` arguments but the data dir: checkpoint 0 would be a copy of a tiny model (the old code
    wrote it, and the SQLite file and keys, before it found a busy port)."""
    return ["-c", str(config_file), "--init_from", str(tiny_model_dir)]


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory, config_file, tiny_model_dir):
    """A running coordinator with checkpoint 0 and no peer at all."""
    coord = Coordinator(tmp_path_factory.mktemp("coordinator") / "data", config_file, tiny_model_dir)
    try:
        yield coord
    finally:
        assert coord.terminate() == 0
        coord.kill()


def _one_error_line(result) -> str:
    """The refusal's one line: exit 2, no traceback, and the last line of stderr is ``error: ...``."""
    assert result.returncode == 2, f"rc {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), result.stderr
    return line


def _start(start_args, data_dir, *flags, timeout=90):
    ports = {"--http_port": "0", "--grpc_port": "0", "--dht_port": "0"}
    args = ["--host", "127.0.0.1"]
    for flag, value in zip(flags[::2], flags[1::2], strict=True):
        if flag in ports:
            ports[flag] = value
        else:
            args += [flag, value]
    for flag, value in ports.items():
        args += [flag, value]
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    result = coordinator_cli("start", *start_args, "--data_dir", str(data_dir), *args, timeout=timeout)
    wall, after = time.monotonic() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return result, (cpu, wall)


def _fast(seconds: tuple[float, float]) -> bool:
    cpu, wall = seconds
    return cpu < FAST_CPU_S and wall < FAST_WALL_S


@pytest.mark.timeout(600)
def test_status_of_a_run_with_no_live_peer(coordinator):
    result = coordinator_cli("status", "--url", coordinator.url)
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert f"run {RUN}: step 0/1000, 0 alive peers" in first and "loss -" in first and "ETA" not in first
    assert "1 checkpoints, latest ckpt-000000 (step 0)" in result.stdout


@pytest.mark.timeout(600)
@pytest.mark.parametrize("flag", ["--http_port", "--grpc_port", "--dht_port"])
def test_second_coordinator_on_a_busy_port_fails_fast_and_writes_nothing(coordinator, start_args, tmp_path, flag):
    port = {"--http_port": coordinator.http_port, "--grpc_port": coordinator.grpc_port,
            "--dht_port": coordinator.dht_port}[flag]  # fmt: skip
    fresh = tmp_path / "fresh"
    result, seconds = _start(start_args, fresh, flag, str(port))
    line = _one_error_line(result)
    assert f"{flag} {port}" in line and "in use" in line
    assert not fresh.exists()
    assert _fast(seconds), seconds


@pytest.mark.timeout(300)
def test_fresh_data_dir_that_exists_is_left_empty_on_a_busy_port(start_args, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        result, seconds = _start(start_args, fresh, "--http_port", str(port))
    assert f"--http_port {port}" in _one_error_line(result)
    assert list(fresh.iterdir()) == []
    assert _fast(seconds), seconds


@pytest.mark.timeout(300)
def test_data_dir_that_is_a_file(start_args, tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("keep me")
    for data_dir in (file, file / "data"):
        result, seconds = _start(start_args, data_dir)
        line = _one_error_line(result)
        assert f"--data_dir {data_dir}" in line and "not a directory" in line, line
        assert _fast(seconds), seconds
    assert file.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.timeout(300)
@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any directory")
def test_data_dir_that_is_not_writable(start_args, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        for data_dir in (locked, locked / "data"):
            line = _one_error_line(_start(start_args, data_dir)[0])
            assert "--data_dir" in line and "not writable" in line, line
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


@pytest.mark.timeout(300)
def test_host_not_of_this_machine_and_one_port_for_two_flags(start_args, tmp_path):
    line = _one_error_line(_start(start_args, tmp_path / "a", "--host", "192.0.2.1")[0])  # TEST-NET-1
    assert "--host 192.0.2.1" in line
    line = _one_error_line(_start(start_args, tmp_path / "b", "--http_port", "41234", "--grpc_port", "41234")[0])
    assert "--grpc_port 41234" in line and "--http_port" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(600)
@pytest.mark.parametrize("client", ["status", "download", "join"])
def test_every_client_refuses_a_server_that_is_not_a_coordinator(other_server, tmp_path, client):
    url = f"{other_server}/json"
    out = tmp_path / "out"
    args = {
        "status": ("coordinator", "status", "--url", url),
        "download": ("coordinator", "download", "--from", url, "--out", str(out)),
        "join": ("peer", "join", "--coordinator", url),
    }[client]
    line = _one_error_line(run_cli(*args, timeout=300))
    assert f"{url} is not a warmswarm coordinator" in line, line
    assert not out.exists()


@pytest.mark.timeout(300)
def test_download_into_a_file(coordinator, tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("keep me")
    for out in (file, file / "ckpt"):
        line = _one_error_line(coordinator_cli("download", "--from", coordinator.url, "--out", str(out)))
        assert f"--out {out} is not a directory" in line, line
    assert file.read_text() == "keep me"


@pytest.mark.timeout(120)
def test_allowlist_add_refuses_a_url_that_is_not_one_and_writes_nothing(tmp_path):
    allowlist = tmp_path / "allowlist.tsv"
    line = _one_error_line(coordinator_cli("allowlist", "add", "alice", "--file", str(allowlist), "--url", "alice"))
    assert "--url" in line
    assert not allowlist.exists()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", sorted(NOT_A_COORDINATOR))
def test_the_client_checks_every_answer_in_one_place(coordinator, other_server, kind):
    """Each path of the API, read from a real coordinator (accepted) and from a server that is not one (refused,
    whatever way it differs); an unreachable one is told apart from both."""
    from peer.run.coordinator_client import (
        CheckpointsAnswer,
        CoordinatorUnavailable,
        NotACoordinator,
        PeersAnswer,
        ProgressAnswer,
        RunAnswer,
        get_answer,
    )

    answers = (RunAnswer, ProgressAnswer, PeersAnswer, CheckpointsAnswer)
    assert get_answer(coordinator.url, RunAnswer).run_id == RUN
    assert get_answer(coordinator.url + "/", ProgressAnswer).loss is None
    assert get_answer(coordinator.url, PeersAnswer).peers == []
    assert [c.name for c in get_answer(coordinator.url, CheckpointsAnswer).checkpoints] == ["ckpt-000000"]
    for answer in answers:
        with pytest.raises(NotACoordinator, match=rf"^{other_server}/{kind} is not a warmswarm coordinator \(GET "):
            get_answer(f"{other_server}/{kind}", answer, timeout=10)
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(CoordinatorUnavailable, match="cannot reach the coordinator at"):
        get_answer(f"http://127.0.0.1:{port}", RunAnswer, timeout=10)


def test_status_text_when_the_coordinator_knows_nothing_yet():
    """Every value the API may send as null is rendered (``-`` or left out), and names are not read as markup."""
    from rich.console import Console

    from coordinator.__main__ import print_status
    from peer.run.coordinator_client import CheckpointsAnswer, PeerEntry, PeersAnswer, ProgressAnswer

    progress = ProgressAnswer(run_id="r", global_step=0, alive_peers=0)
    peers = PeersAnswer(peers=[PeerEntry(name="[red]x", short_id="ab12", samples=0, alive=False)])
    console = Console(record=True, width=200, force_terminal=False)
    print_status(console, progress, peers, CheckpointsAnswer(checkpoints=[]))
    text = console.export_text()
    assert "run r: step 0, 0 alive peers, - samples/s, loss -\n" in text
    assert "[red]x" in text and "0 checkpoints\n" in text


def test_status_text_names_the_newest_evaluated_checkpoint_and_a_failing_one():
    from rich.console import Console

    from coordinator.__main__ import print_status
    from peer.run.coordinator_client import CheckpointsAnswer, PeersAnswer, ProgressAnswer

    def entry(name: str, evaluation: dict | None) -> dict:
        return {"name": name, "step": int(name[5:]), "created": 0.0, "files": [], "evaluation": evaluation}

    scores = [
        {"role": "checkpoint", "task": "polarity", "metric": "accuracy", "mean": 0.719, "sd": 0.009, "headline": True},
        {"role": "checkpoint", "task": "lee", "metric": "pearson", "mean": 0.6, "sd": 0.0, "headline": False},
        {"role": "checkpoint", "task": "heldout", "metric": "disc_auc", "mean": 0.55, "sd": 0.0, "headline": False},
        {"role": "checkpoint", "task": "lee", "metric": "spearman", "mean": None, "sd": None, "headline": True},
    ]
    answer = CheckpointsAnswer.model_validate({"checkpoints": [
        entry("ckpt-000100", {"done": True, "attempts": 0, "error": "", "scores": scores}),
        entry("ckpt-000200", {"done": False, "attempts": 2, "error": "killed by SIGKILL", "scores": []}),
    ]})  # fmt: skip
    console = Console(record=True, width=200, force_terminal=False)
    print_status(console, ProgressAnswer(run_id="r", global_step=0, alive_peers=0), PeersAnswer(peers=[]), answer)
    text = console.export_text()
    assert "evaluated ckpt-000100 (step 100): polarity accuracy 0.719 ± 0.009, lee spearman - ± -\n" in text
    assert "evaluation of ckpt-000200 failed 2 times: killed by SIGKILL\n" in text


def test_status_text_names_the_exports_of_the_newest_checkpoint():
    from rich.console import Console

    from coordinator.__main__ import print_status
    from peer.run.coordinator_client import CheckpointsAnswer, PeersAnswer, ProgressAnswer

    export = {"created": 0.0, "files": [{"path": "config.json", "size": 2, "sha256": "00"}]}
    answer = CheckpointsAnswer.model_validate({"checkpoints": [
        {"name": "ckpt-000100", "step": 100, "created": 0.0, "files": [], "exports": {"bf16": export}},
        {"name": "ckpt-000200", "step": 200, "created": 0.0, "files": [], "exports": {"bf16": export, "int8": export}},
    ]})  # fmt: skip
    console = Console(record=True, width=200, force_terminal=False)
    print_status(console, ProgressAnswer(run_id="r", global_step=0, alive_peers=0), PeersAnswer(peers=[]), answer)
    assert "exports of ckpt-000200: bf16, int8 (download --form FORM)\n" in console.export_text()
    answer.checkpoints[1].exports = {}  # none built yet: no line
    console = Console(record=True, width=200, force_terminal=False)
    print_status(console, ProgressAnswer(run_id="r", global_step=0, alive_peers=0), PeersAnswer(peers=[]), answer)
    assert "exports of" not in console.export_text()


def test_grpc_server_that_is_not_a_coordinator(tmp_path):
    from concurrent import futures

    import grpc

    from peer.run.coordinator_client import NotACoordinator
    from peer.run.download import download

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))  # serves no service at all
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with pytest.raises(NotACoordinator, match=rf"^grpc://127.0.0.1:{port} is not a warmswarm coordinator"):
            download(f"grpc://127.0.0.1:{port}", tmp_path / "out", progress=False, timeout=10)
    finally:
        server.stop(0)
    assert not (tmp_path / "out").exists()
