"""``python -m coordinator start`` as a real process: checkpoint 0, signed config in the DHT, monitor fed by a real
peer record, HTTP API, ``status`` and ``download`` CLIs, checkpoint 0 evaluated in the background, clean SIGTERM,
and a restart that keeps the history and redoes no evaluation."""

import json
import time

import hivemind
import pytest
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.schema import SchemaValidator
from hivemind.utils import get_dht_time
from hivemind.utils.crypto import RSAPrivateKey

from peer.run.records import LocalMetrics, MetricsSchema, config_key, metrics_key
from tests.coordinator.core.coordinator_proc import Coordinator, coordinator_cli, write_tiny_model

RUN = "service-test"
CONFIG = f"""
run_id: {RUN}
model: {{hidden_size: 32, num_layers: 2, num_heads: 2, ffn_size: 64, max_position_embeddings: 64}}
train: {{total_steps: 1000}}
data: {{seq_len: 32}}
"""
# the background evaluation at its tiniest: one task, one seed, one step
EVAL_ARGS = ("--eval_tasks", "polarity", "--eval_seeds", "1", "--eval_steps", "1")
_cli = coordinator_cli


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.timeout(500)
def test_start_serves_monitors_downloads_stops_and_restarts_with_history(tmp_path, tiny_model_dir):
    config = tmp_path / "run.yaml"
    config.write_text(CONFIG)
    data = tmp_path / "data"
    peer = None
    coord = Coordinator(data, config, tiny_model_dir, extra_args=EVAL_ARGS)
    try:
        assert coord.join.startswith("python -m peer join --coordinator http://127.0.0.1:")
        run = coord.get("/api/v1/run")
        assert run["run_id"] == RUN and run["config"]["model"]["hidden_size"] == 32
        assert run["initial_peers"] and run["join_command"] == coord.join
        (ckpt0,) = coord.get("/api/v1/checkpoints")["checkpoints"]
        assert ckpt0["name"] == "ckpt-000000" and ckpt0["step"] == 0

        # a real peer DHT joins, reads the signed config record and publishes a signed metrics record
        sig = RSASignatureValidator(RSAPrivateKey())
        peer = hivemind.DHT(
            initial_peers=run["initial_peers"],
            host_maddrs=["/ip4/127.0.0.1/tcp/0"],
            record_validators=[SchemaValidator(MetricsSchema, prefix=RUN), sig],
            start=True,
        )
        published = peer.get(config_key(RUN), latest=True)
        (entry,) = published.value.values()
        assert entry.value["run_id"] == RUN and entry.value["model"]["num_layers"] == 2
        record = LocalMetrics(step=42, samples_per_second=12.5, samples_accumulated=3, samples_total=0, loss=6.5,
                              mini_steps=1, time=get_dht_time(), peer_name="tester")  # fmt: skip
        assert peer.store(metrics_key(RUN), record.dict(), get_dht_time() + 60, subkey=sig.local_public_key)
        deadline = time.time() + 30
        while coord.get("/api/v1/progress")["global_step"] < 42 and time.time() < deadline:
            time.sleep(0.5)
        progress = coord.get("/api/v1/progress")
        assert (progress["global_step"], progress["alive_peers"], progress["loss"]) == (42, 1, 6.5)
        assert [p["name"] for p in coord.get("/api/v1/peers")["peers"]] == ["tester"]

        second = _cli("start", "-c", str(config), "--data_dir", str(data), "--http_port", "0", "--grpc_port", "0")
        assert second.returncode == 2 and "is in use by another running coordinator" in second.stderr

        status = _cli("status", "--url", coord.url)
        assert status.returncode == 0, status.stderr
        assert "step 42/1000" in status.stdout and "tester" in status.stdout and "ckpt-000000" in status.stdout

        out = tmp_path / "downloaded"
        dl = _cli("download", "--from", coord.url, "--out", str(out))
        assert dl.returncode == 0, dl.stderr
        assert "ckpt-000000 (step 0)" in dl.stdout
        from transformers import AutoModel

        AutoModel.from_pretrained(out)
        assert json.loads((out / "training_state.json").read_text())["run_id"] == RUN

        history_points = len(coord.get("/api/v1/history")["history"])
        assert history_points >= 1

        # checkpoint 0 is evaluated in the background, by a worker process at nice +19
        deadline = time.time() + 240
        while not (evaluations := coord.get("/api/v1/evaluations")["evaluations"]) and time.time() < deadline:
            time.sleep(1.0)
        (evaluation,) = evaluations
        assert (evaluation["checkpoint"], evaluation["done"], evaluation["attempts"]) == ("ckpt-000000", True, 0)
        polarity = next(x for x in evaluation["scores"] if x["task"] == "polarity")
        assert polarity["seeds"] == [0] and 0.0 <= polarity["mean"] <= 1.0
        assert coord.get("/api/v1/checkpoints")["checkpoints"][0]["evaluation"] == evaluation
        side_file = data / "checkpoints" / "ckpt-000000" / "evaluation.json"
        evaluated_at = side_file.stat().st_mtime

        # and exported in the default forms, by another worker at nice +19, and served
        deadline = time.time() + 240
        while len(coord.get("/api/v1/checkpoints")["checkpoints"][0]["exports"]) < 2 and time.time() < deadline:
            time.sleep(1.0)
        assert sorted(coord.get("/api/v1/checkpoints")["checkpoints"][0]["exports"]) == ["bf16", "int8"]
        dl = _cli("download", "--from", coord.url, "--out", str(tmp_path / "int8"), "--form", "int8")
        assert dl.returncode == 0 and "the int8 export of ckpt-000000" in dl.stdout, dl.stderr
        assert coord.terminate() == 0
    except BaseException:
        if peer is not None:
            peer.shutdown()
        raise
    finally:
        coord.kill()

    # restart on the same data dir: same history, same checkpoint, same DHT identity (same join addresses), and it
    # dials the peer it knew, so the running peer's next record reaches it although the peer knows no one else
    coord2 = Coordinator(data, config, tiny_model_dir, extra_args=EVAL_ARGS)
    try:
        progress = coord2.get("/api/v1/progress")
        assert progress["global_step"] == 42
        deadline = time.time() + 30
        while coord2.get("/api/v1/progress")["global_step"] < 50 and time.time() < deadline:
            # like a real peer, republish every few seconds (a store can precede the coordinator's reconnection)
            record = record.copy(update=dict(step=50, samples_total=64, time=get_dht_time()))
            peer.store(metrics_key(RUN), record.dict(), get_dht_time() + 60, subkey=sig.local_public_key)
            time.sleep(1.0)
        assert coord2.get("/api/v1/progress")["global_step"] == 50
        assert len(coord2.get("/api/v1/history")["history"]) > history_points
        assert [p["name"] for p in coord2.get("/api/v1/peers")["peers"]] == ["tester"]
        assert [c["name"] for c in coord2.get("/api/v1/checkpoints")["checkpoints"]] == ["ckpt-000000"]
        assert coord2.get("/api/v1/evaluations")["evaluations"] == [evaluation]  # kept, and not redone:
        assert side_file.stat().st_mtime == evaluated_at  # no worker ran on it again
        assert sorted(coord2.get("/api/v1/checkpoints")["checkpoints"][0]["exports"]) == ["bf16", "int8"]
        assert (
            coord2.get("/api/v1/run")["initial_peers"][0].split("/p2p/")[1] == run["initial_peers"][0].split("/p2p/")[1]
        )
        assert coord2.terminate() == 0
    finally:
        peer.shutdown()
        coord2.kill()


def test_bad_input_gives_one_line_and_exit_2(tmp_path):
    result = _cli("start", "-c", str(tmp_path / "missing.yaml"), "--data_dir", str(tmp_path / "d"))
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: config file not found")
    result = _cli("status", "--url", "http://127.0.0.1:9", timeout=60)
    assert result.returncode == 2 and "error: cannot reach the coordinator at http://127.0.0.1:9" in result.stderr
    config = tmp_path / "run.yaml"
    config.write_text(CONFIG)
    refused = {
        ("--eval_tasks", "polarity,sentiment"): "error: unknown task 'sentiment' (known: polarity, newsgroups, lee)",
        ("--eval_seeds", "0"): "error: --seeds must be at least 1",
    }
    for flags, line in refused.items():
        result = _cli("start", "-c", str(config), "--data_dir", str(tmp_path / "d"), *flags)
        assert result.returncode == 2 and result.stderr.strip() == line, result.stderr
    assert not (tmp_path / "d").exists()  # refused before anything was written
