"""Builders shared by the coordinator API tests (and the dashboard screenshot): checkpoint directories laid out as
the saver writes them, and a store filled with a plausible run's history."""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

from coordinator.store import PeerObservation, Store

RUN_ID = "api-test-run"
T0 = 1_700_000_000.0


def write_checkpoint(root: Path, step: int, files: dict[str, bytes], manifest: bool = True, stage: int = 0) -> Path:
    """Lays out ``ckpt-<step>/`` with ``files`` and (unless told not to) a manifest written last; ``stage``: the
    growth stage it says (left out at 0, as a manifest from before stages)."""
    d = root / f"ckpt-{step:06d}"
    for rel, data in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)
    if manifest:
        entries = [{"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                   for rel, data in sorted(files.items())]  # fmt: skip
        header = {"files": entries, "step": step} | ({"stage": stage} if stage else {})
        (d / "manifest.json").write_text(json.dumps(header))
    return d


def write_export(ckpt: Path, form: str, files: dict[str, bytes]) -> Path:
    """Publishes ``form``'s export of the checkpoint at ``ckpt`` as the background exporter does: built in a staging
    dir beside it, described by its manifest (``coordinator.exports.stage``), renamed into place (``publish``)."""
    from coordinator.exports import export_path, publish, stage

    staged = ckpt.parent / f".staging-{ckpt.name}-{form}"
    for rel, data in files.items():
        (staged / rel).parent.mkdir(parents=True, exist_ok=True)
        (staged / rel).write_bytes(data)
    stage(staged, int(ckpt.name.split("-")[1]), form)
    assert publish(staged, ckpt, form), f"could not publish {form} into {ckpt}"
    return export_path(ckpt, form)


def export_payload(form: str, step: int, weight_bytes: int) -> dict[str, bytes]:
    """The files of a small export: config, card, tokenizer and ``weight_bytes`` of weights."""
    files = {rel: f"{rel} of the {form} export of step {step}\n".encode()
             for rel in ("config.json", "README.md", "export.json", "tokenizer.json")}  # fmt: skip
    return {**files, "model.safetensors": random.Random(f"{form}{step}").randbytes(weight_bytes)}


def checkpoint_payload(seed: int, big_bytes: int = 3 << 20) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {
        "model.safetensors": rng.randbytes(big_bytes),
        "config.json": json.dumps({"hidden_size": 64, "seed": seed}).encode(),
        "generator/config.json": json.dumps({"hidden_size": 16}).encode(),
        "training_state.json": json.dumps({"step": seed, "samples": 1000 * seed, "run_id": RUN_ID}).encode(),
    }


def populate_store(store: Store, now: float, points: int = 90, peers: int = 4) -> None:
    """A plausible run: a falling loss, a swarm that grows from 1 to ``peers``, samples/s that follow it."""
    store.open_run(RUN_ID, {"run_id": RUN_ID}, total_steps=2000, now=now - points * 10 - 5)
    names = ["alice-4090", "bob-a100", "carol-laptop", "dave-h100", "erin", "frank"]
    totals = [0] * peers
    for i in range(points):
        t = now - (points - i) * 10
        alive = min(peers, 1 + i * peers // max(1, points // 2))
        for p in range(alive):
            totals[p] += 40 * (p + 1) * 10
            store.observe_peer(PeerObservation(f"{p:02x}" * 16, names[p % len(names)], i * 5, totals[p],
                                               40.0 * (p + 1), 2.0 + 6.0 * math.exp(-i / 25), t))  # fmt: skip
        sps = sum(40.0 * (p + 1) for p in range(alive))
        store.record_progress(i * 5, alive, sps, 2.0 + 6.0 * math.exp(-i / 25) + 0.1 * math.sin(i), now=t)
    store.add_rejected({"bad_signature": 3, "malformed": 1})


# Volunteer names as long as real ones get (site, machine, GPU), and the files a grown ELECTRA checkpoint holds:
# the data an outside operator's dashboard overflowed with at 1400 and 1920 px and clipped at 400 px.
LONG_NAMES = [
    "tu-darmstadt-lichtenberg2-hpc-node-0042-a100-80gb",
    "alice-home-workstation-rtx4090-24gb-watercooled",
    "university-of-helsinki-mahti-gpu-partition-v100",
    "bob-laptop-thinkpad-p16-gen2-rtx-a5000-mobile",
    "carol-cloud-spot-instance-eu-west-4-l4-preemptible",
    "dave-basement-rack-dual-3090-nvlink-bridge-2x24gb",
    "erin-macbook-pro-m3-max-128gb-unified-memory-mps",
    "frank-lab-server-hgx-h100-sxm5-8way-partition-7",
]
CROWDED_FILES = [
    "config.json", "model.safetensors", "optimizer.safetensors", "training_state.json", "README.md",
    "generator/config.json", "generator/model.safetensors", "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json", "tokenizer/vocab.txt",
]  # fmt: skip
# The crowded history: two stretches of samples every SAMPLE_SECONDS with the coordinator down in between.
SAMPLE_SECONDS = 10.0
SEGMENT_POINTS = 60
DOWNTIME_SECONDS = 1200.0


def write_crowded_checkpoints(root: Path, count: int = 6) -> list[Path]:
    """``count`` checkpoints, each with the eleven files of a grown model with its generator and tokenizer."""
    return [write_checkpoint(root, 500 * (i + 1), {rel: f"{rel} of step {500 * (i + 1)}\n".encode()
                                                   for rel in CROWDED_FILES})
            for i in range(count)]  # fmt: skip


def crowded_history_times(now: float) -> tuple[list[float], tuple[float, float]]:
    """The history's sample times, and the (last before, first after) times around the coordinator's downtime."""
    second_start = now - SEGMENT_POINTS * SAMPLE_SECONDS
    first_end = second_start - DOWNTIME_SECONDS
    first = [first_end - (SEGMENT_POINTS - 1 - i) * SAMPLE_SECONDS for i in range(SEGMENT_POINTS)]
    second = [second_start + i * SAMPLE_SECONDS for i in range(SEGMENT_POINTS)]
    return first + second, (first_end, second_start)


def populate_crowded_store(store: Store, now: float) -> None:
    """Eight volunteers with long names and 64-hex ids: five still training, three that left while the coordinator
    was down (their last samples/s is stale), one of the five banned; a history with the downtime as a gap."""
    times, (_, second_start) = crowded_history_times(now)
    store.open_run(RUN_ID, {"run_id": RUN_ID}, total_steps=5000, now=times[0] - 5)
    ids = [hashlib.sha256(name.encode()).hexdigest() for name in LONG_NAMES]
    totals = [0] * len(ids)
    for i, t in enumerate(times):
        alive = range(len(ids)) if t < second_start else range(5)
        for p in alive:
            totals[p] += 30 * (p + 1) * int(SAMPLE_SECONDS)
            obs = PeerObservation(peer_id=ids[p], name=LONG_NAMES[p], step=i * 4, samples_total=totals[p],
                                  samples_per_second=30.0 * (p + 1), loss=3.0 - i / 100, time=t)  # fmt: skip
            store.observe_peer(obs)
        sps = sum(30.0 * (p + 1) for p in alive)
        store.record_progress(i * 4, len(alive), sps, 3.0 - i / 100 + 0.05 * math.sin(i), now=t)
    store.set_banned(ids[1], reason="gradient 40x the aggregate's norm in 3 rounds (reported by 4 of 5 peers)")


def evaluation_report(step: int, quality: float):
    """A background evaluation's report of checkpoint ``step`` (the checkpoint alone, 2 seeds), scores rising with
    ``quality`` in [0, 1]."""
    from coordinator.evaluation.results import EvaluationReport, ModelEvaluation, TaskScores
    from coordinator.evaluation.spec import FinetuneBudget
    from coordinator.evaluation.tasks import TASK_INFO

    def scores(name: str, base: float, other: dict | None = None) -> TaskScores:
        info = TASK_INFO[name]
        return TaskScores(info.name, info.title, info.task_type, info.dataset, info.metric, [0, 1],
                          [base + 0.2 * quality - 0.01, base + 0.2 * quality + 0.01], other or {})  # fmt: skip

    model = ModelEvaluation(
        "checkpoint", f"ckpt-{step:06d}", 66_000_000,
        heldout={"disc_auc": 0.55 + 0.3 * quality, "mlm_loss": 10.0 - 4.0 * quality},
        tasks=[scores("polarity", 0.6), scores("newsgroups", 0.7),
               scores("lee", 0.5, {"pearson": [0.45 + 0.2 * quality, 0.47 + 0.2 * quality]})],
    )  # fmt: skip
    return EvaluationReport(f"ckpt-{step:06d}", step, [0, 1], FinetuneBudget(), {}, [model], seconds=42.0)


def populate_evaluations(store: Store, checkpoints_dir: Path) -> None:
    """Evaluations as the background evaluator leaves them: ckpt-000030 (pruned since: its scores are in the store
    only) and ckpt-000060 done, the latter's report also beside its files; ckpt-000120 failed once so far."""
    from coordinator.evaluation.results import EVALUATION_FILE
    from coordinator.evaluator import report_scores

    for step, quality in ((30, 0.0), (60, 0.5)):
        report = evaluation_report(step, quality)
        name = f"ckpt-{step:06d}"
        store.record_evaluation(name, step, report_scores(report, name, step), report.seconds)
    evaluation_report(60, 0.5).to_json(checkpoints_dir / "ckpt-000060" / EVALUATION_FILE)
    store.record_evaluation_failure("ckpt-000120", 120, "killed by SIGKILL")


# The growing run: a history of GROWING_POINTS samples whose stage goes from 0 to 1 at point GROWING_SWITCH (global
# step 2 x that), and checkpoints on both sides of the switch, evaluated.
GROWING_POINTS = 90
GROWING_SWITCH = 45
GROWING_CHECKPOINTS = ((40, 0), (2 * GROWING_SWITCH, 0), (150, 1))  # (step, stage): the last one before, one after


def growing_history_times(now: float) -> list[float]:
    return [now - (GROWING_POINTS - i) * SAMPLE_SECONDS for i in range(GROWING_POINTS)]


def populate_growing_store(store: Store, now: float) -> None:
    """Two volunteers training across a growth switch: one history, each point with its stage."""
    times = growing_history_times(now)
    store.open_run(RUN_ID, {"run_id": RUN_ID}, total_steps=1000, now=times[0] - 5)
    for i, t in enumerate(times):
        for p in range(2):
            store.observe_peer(PeerObservation(f"{p:02x}" * 32, f"peer-{p}", 2 * i, 64 * (i + 1), None, 3.0, t))
        stage = 1 if i >= GROWING_SWITCH else 0
        store.record_progress(2 * i, 2, 12.8, 3.0 - i / 100 + 0.05 * math.sin(i), now=t, stage=stage)
