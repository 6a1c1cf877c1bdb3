"""The run config of the ``python -m peer train`` tests: a 1-layer random-init model on the embedded corpus."""

from pathlib import Path

import yaml


def write_tiny_run(directory: Path, run_id: str, **train) -> Path:
    """Writes ``directory/run.yaml`` (checkpoints under ``directory/run``) with ``train`` settings beside the tiny
    model's; returns its path."""
    cfg = {
        "run_id": run_id,
        "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "ffn_size": 64, "max_position_embeddings": 64},
        "data": {"seq_len": 32},
        "train": {"batch_size": 2, "warmup_steps": 1, "out_dir": str(directory / "run"), "init": "random", **train},
    }
    path = directory / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
