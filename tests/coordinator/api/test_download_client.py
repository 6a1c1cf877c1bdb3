"""The download client against real HTTP and gRPC servers: cut transfers resume, corrupt files are caught."""

from __future__ import annotations

import filecmp
import json
import time

import pytest
from api_fixtures import checkpoint_payload, write_checkpoint

from coordinator.api.grpc_server import start_grpc_server
from peer.run.download import DownloadError, download

FILES = ["config.json", "generator/config.json", "model.safetensors", "training_state.json"]


def assert_same_checkpoint(out, src):
    for rel in FILES:
        assert filecmp.cmp(out / rel, src / rel, shallow=False), rel
    assert not list(out.rglob("*.part"))
    assert json.loads((out / "manifest.json").read_text()) == json.loads((src / "manifest.json").read_text())


def test_grpc_download_cut_half_way_resumes_and_verifies(coordinator, tmp_path):
    # Big enough that the cut lands mid-file: gRPC's flow-control window lets a few MiB be in flight at once.
    src = write_checkpoint(coordinator.checkpoints_dir, 300, checkpoint_payload(300, big_bytes=24 << 20))
    big = (src / "model.safetensors").stat().st_size
    small = sum((src / rel).stat().st_size for rel in FILES if rel < "model.safetensors")
    received = 0

    def cut_the_server(n: int) -> None:
        nonlocal received
        received += n
        if received >= small + big // 3:
            coordinator.grpc.stop(0)  # the coordinator goes away mid-stream

    out = tmp_path / "out"
    with pytest.raises(DownloadError, match="run the same command again to resume"):
        download(f"grpc://{coordinator.grpc_target}", out, retries=0, progress=False, on_bytes=cut_the_server)
    part = out / "model.safetensors.part"
    held = part.stat().st_size
    assert big // 4 < held < big  # a real prefix survived the cut

    restarted = start_grpc_server(coordinator.store, coordinator.checkpoints_dir, "127.0.0.1", 0)
    try:
        result = download(f"grpc://127.0.0.1:{restarted.port}", out, progress=False)
    finally:
        restarted.stop(0)
    assert (result.name, result.step, result.files) == ("ckpt-000300", 300, 4)
    assert result.bytes_fetched == big - held + (src / "training_state.json").stat().st_size
    assert_same_checkpoint(out, src)


def test_http_download_resumes_a_partial_file_and_skips_complete_ones(coordinator, tmp_path):
    src = coordinator.checkpoints_dir / "ckpt-000120"
    data = (src / "model.safetensors").read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors.part").write_bytes(data[: len(data) // 3])
    before = coordinator.metrics.download_bytes_total.labels("http")._value.get()
    result = download(coordinator.url, out, checkpoint="ckpt-000120", progress=False)
    assert result.bytes_reused == len(data) // 3
    assert result.bytes_fetched < sum((src / rel).stat().st_size for rel in FILES)
    deadline = time.monotonic() + 10  # the server counts a response once it has finished sending it
    while coordinator.metrics.download_bytes_total.labels("http")._value.get() - before < result.bytes_fetched:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert coordinator.metrics.download_bytes_total.labels("http")._value.get() - before == result.bytes_fetched
    assert_same_checkpoint(out, src)
    again = download(coordinator.url, out, progress=False)
    assert again.bytes_fetched == 0  # everything verified on disk already


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_corrupted_file_on_the_server_is_detected(coordinator, tmp_path, protocol):
    target = coordinator.checkpoints_dir / "ckpt-000120" / "model.safetensors"
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # bit rot: same size, different content
    target.write_bytes(bytes(raw))
    source = coordinator.url if protocol == "http" else f"grpc://{coordinator.grpc_target}"
    out = tmp_path / "out"
    with pytest.raises(DownloadError, match="model.safetensors of ckpt-000120 failed verification"):
        download(source, out, progress=False)
    assert not (out / "model.safetensors").exists() and not (out / "model.safetensors.part").exists()
    assert not (out / "manifest.json").exists()  # an incomplete download never looks like a checkpoint


@pytest.mark.parametrize(
    "source, message",
    [
        ("ftp://example/x", "--from must be"),
        ("grpc://", "--from must be"),
    ],
)
def test_bad_sources_fail_with_one_line(tmp_path, source, message):
    with pytest.raises(DownloadError, match=message):
        download(source, tmp_path / "out", progress=False)


def test_unknown_checkpoint_names_what_exists(coordinator, tmp_path):
    with pytest.raises(DownloadError, match="ckpt-000060, ckpt-000120"):
        download(coordinator.url, tmp_path / "out", checkpoint="ckpt-999999", progress=False)


def test_a_downloaded_model_checkpoint_loads_with_transformers(coordinator, tmp_path):
    """End to end with a real (tiny) HF model dir: served, downloaded over gRPC, verified, loaded by transformers."""
    import torch
    from transformers import AutoModel

    from peer.config import ModelSpec
    from peer.modeling import build_models, save_models

    spec = ModelSpec(hidden_size=32, num_layers=2, num_heads=2, ffn_size=64, max_position_embeddings=64)
    models = build_models(spec, vocab_size=100, seed=0)
    staging = tmp_path / "staging"
    save_models(models, staging)
    files = {str(f.relative_to(staging)): f.read_bytes() for f in sorted(staging.rglob("*")) if f.is_file()}
    write_checkpoint(coordinator.checkpoints_dir, 500, files)
    out = tmp_path / "out"
    result = download(f"grpc://{coordinator.grpc_target}", out, progress=False)
    assert result.name == "ckpt-000500"
    loaded = AutoModel.from_pretrained(out)
    want = {k.removeprefix("electra."): v for k, v in models.discriminator.state_dict().items()}
    got = loaded.state_dict()
    assert len(got) > 10 and all(torch.equal(v, want[k]) for k, v in got.items())  # the encoder, bit for bit


def test_cli_download_reports_a_corrupt_checkpoint_in_one_line(coordinator, tmp_path):
    import subprocess
    import sys

    target = coordinator.checkpoints_dir / "ckpt-000120" / "config.json"
    target.write_bytes(target.read_bytes().replace(b"64", b"65"))
    cmd = [sys.executable, "-m", "coordinator", "download", "--from", coordinator.url, "--out", str(tmp_path / "o")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: config.json of ckpt-000120 failed verification"), out.stderr


def test_cli_download_without_a_terminal_draws_no_progress_bar(coordinator, tmp_path):
    """journald and container logs keep every ``\\r`` redraw of a bar as a line of its own."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "coordinator", "download", "--from", coordinator.url, "--out", str(tmp_path / "o")]
    out = subprocess.run(cmd, capture_output=True, timeout=120)  # bytes: text mode would turn \r into \n
    assert out.returncode == 0, out.stderr
    assert b"\r" not in out.stderr + out.stdout and b"%|" not in out.stderr, out.stderr


def test_a_failed_download_never_leaves_a_stale_manifest(coordinator, tmp_path):
    out = tmp_path / "out"
    download(coordinator.url, out, checkpoint="ckpt-000060", progress=False)
    assert (out / "manifest.json").exists()
    target = coordinator.checkpoints_dir / "ckpt-000120" / "model.safetensors"
    target.write_bytes(b"\0" * target.stat().st_size)
    with pytest.raises(DownloadError, match="failed verification"):
        download(coordinator.url, out, progress=False)  # the newer checkpoint, into the same dir
    assert not (out / "manifest.json").exists()  # the dir no longer claims to hold a complete checkpoint


def test_grpc_download_rides_out_a_coordinator_restart(coordinator, tmp_path):
    """Within one call: the server restarts on the same port mid-file and the client resumes by itself."""
    src = write_checkpoint(coordinator.checkpoints_dir, 300, checkpoint_payload(300, big_bytes=24 << 20))
    port = coordinator.grpc.port
    restarted = []
    received = 0

    def restart_once(n: int) -> None:
        nonlocal received
        received += n
        if received >= 8 << 20 and not restarted:
            coordinator.grpc.stop(0)
            restarted.append(start_grpc_server(coordinator.store, coordinator.checkpoints_dir, "127.0.0.1", port))

    try:
        result = download(f"grpc://127.0.0.1:{port}", tmp_path / "out", retries=5, progress=False,
                          on_bytes=restart_once)  # fmt: skip
    finally:
        for server in restarted:
            server.stop(0)
    assert restarted and result.bytes_fetched == sum((src / rel).stat().st_size for rel in FILES)  # nothing twice
    assert_same_checkpoint(tmp_path / "out", src)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_exclude_and_include_globs_skip_files_and_the_rest_still_verifies(coordinator, tmp_path, protocol):
    src = write_checkpoint(coordinator.checkpoints_dir, 300, {**checkpoint_payload(300, big_bytes=1 << 16),
                                                              "optimizer.safetensors": b"\1" * (1 << 20)})  # fmt: skip
    source = coordinator.url if protocol == "http" else f"grpc://{coordinator.grpc_target}"
    out = tmp_path / "out"
    result = download(source, out, progress=False, exclude=["optimizer.*", "generator/*"])
    assert (result.files, result.skipped) == (3, 2)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "config.json", "manifest.json", "model.safetensors", "training_state.json"]  # fmt: skip
    for rel in ("config.json", "model.safetensors", "training_state.json"):
        assert filecmp.cmp(out / rel, src / rel, shallow=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [f["path"] for f in manifest["files"]] == ["config.json", "model.safetensors", "training_state.json"]
    assert [f["path"] for f in manifest["excluded"]] == ["generator/config.json", "optimizer.safetensors"]
    assert result.bytes_fetched < (1 << 20)  # the optimizer state never crossed the wire

    only = download(source, tmp_path / "only", progress=False, include=["*.json"], exclude=["training_state.json"])
    assert (only.files, only.skipped) == (2, 3)  # config.json and generator/config.json: '*' crosses '/'
    with pytest.raises(DownloadError, match="leave no file of ckpt-000300"):
        download(source, tmp_path / "none", progress=False, include=["*.bin"])


def test_cli_download_exclude(coordinator, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "coordinator", "download", "--from", coordinator.url, "--out", str(out),
           "--checkpoint", "ckpt-000120", "--exclude", "model.*", "--exclude", "generator/*"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "2 files skipped" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "manifest.json", "training_state.json"]
