"""Writing a grown model as the run's initial state (checkpoint 0): model dir + ``growth.json``, atomically.

Every peer can regrow the initial state itself and compare sha256s with the coordinator's, so the output must be a
pure function of (source, spec, growth spec): no timestamps, fixed draw order, safetensors (deterministic bytes).
The dir is written next to ``out`` under a temporary name and renamed, so a failure leaves nothing at ``out``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoTokenizer

from peer.config import GrowthSpec, ModelSpec, RunConfig
from peer.errors import UserError
from peer.growth.grow import GrowthResult, grow
from peer.growth.layout import dims_from_hf_config
from peer.growth.source import load_source, resolve_source
from peer.growth.verify import measure_preservation, probe_batch
from peer.modeling import GENERATOR_SUBDIR, save_models

logger = logging.getLogger(__name__)

GROWTH_RECORD = "growth.json"
WEIGHT_FILES = ("model.safetensors", f"{GENERATOR_SUBDIR}/model.safetensors")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def grow_to_dir(
    source: str, spec: ModelSpec, growth: GrowthSpec, out: str | Path, progress: Callable[[str], None] = logger.info
) -> dict:
    """Grows ``source`` into ``spec`` and writes the model dir + ``growth.json`` at ``out`` (which must not exist or
    be empty). Returns the growth record. ``progress`` is told each stage (the CLI shows it)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"output {out} already exists and is not an empty dir")
    progress("loading source")
    src_dir = resolve_source(source)
    src = load_source(src_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(src_dir)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the source tokenizer from {src_dir}: {str(e).splitlines()[0]}") from None
    batch = probe_batch(tokenizer)
    progress("growing (fp32, written)")
    result = grow(src, spec, growth, dtype=torch.float32)
    record = dict(result.record)
    record["source"] = source
    record["preservation_fp32"] = measure_preservation(
        result.source_discriminator, result.models.discriminator, result.hidden_index, batch
    ).as_dict()
    progress("measuring the width method's error (fp64, source depth)")
    record["width_preservation_fp64"] = _width_only_error(src, spec, growth, batch)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        progress("writing")
        save_models(result.models, tmp, tokenizer)
        record["sha256"] = {name: sha256_file(tmp / name) for name in WEIGHT_FILES if (tmp / name).is_file()}
        (tmp / GROWTH_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def _width_only_error(src, spec: ModelSpec, growth: GrowthSpec, batch) -> dict[str, float]:
    """The width method's own error: the same growth in fp64 with the source's depth, so stacking does not mask it."""
    same_depth = dataclasses.replace(spec, num_layers=dims_from_hf_config(src.config).layers)
    result: GrowthResult = grow(src, same_depth, growth, dtype=torch.float64)
    return measure_preservation(
        result.source_discriminator, result.models.discriminator, result.hidden_index, batch
    ).as_dict()


def grow_run_initial_state(cfg: RunConfig, out_dir: str | Path) -> Path:
    """The run's checkpoint 0 for the coordinator: ``cfg.growth`` applied to ``cfg.model``, written at ``out_dir``."""
    grow_to_dir(cfg.growth.source, cfg.model, cfg.growth, out_dir)
    return Path(out_dir)
