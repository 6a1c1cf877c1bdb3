"""Writing a grown model as the run's initial state (checkpoint 0): model dir + ``growth.json``, atomically.

Every peer can regrow the initial state itself and compare sha256s with the coordinator's, so the output must be a
pure function of (source, spec, growth spec): no timestamps, fixed draw order, safetensors (deterministic bytes).
The dir is written next to ``out`` under a temporary name and renamed, so a failure leaves nothing at ``out``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoTokenizer

from peer.config import DataSpec, GrowthSpec, ModelSpec, ObjectiveSpec, RunConfig
from peer.data import build_heldout_batches
from peer.errors import UserError
from peer.growth.grow import grow
from peer.growth.source import load_source, resolve_source
from peer.growth.verify import measure_preservation, probe_batch
from peer.modeling import GENERATOR_SUBDIR, PretrainingModels, save_models
from peer.objectives import build_objective
from peer.run.checkpoint_layout import GROWTH_RECORD
from peer.run.model_card import write_model_card
from peer.run.writable_dir import staged_dir

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", f"{GENERATOR_SUBDIR}/model.safetensors")
# Held-out batches of the embedded corpus for the step-0 loss: 32 sequences of 64 tokens, a few seconds on a CPU.
LOSS_SEQ_LEN, LOSS_BATCH_SIZE, LOSS_BATCHES = 64, 8, 4


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def grow_to_dir(
    source: str,
    spec: ModelSpec,
    growth: GrowthSpec,
    out: str | Path,
    progress: Callable[[str], None] = logger.info,
    data: DataSpec | None = None,
) -> dict:
    """Grows ``source`` into ``spec`` and writes the model dir + ``growth.json`` + its model card (``README.md``,
    naming ``data`` as the corpus it is to be pretrained on) at ``out`` (which must not exist or be empty). Returns
    the growth record. ``progress`` is told each stage (the CLI shows it)."""
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
    width_only = grow(src, spec, growth, dtype=torch.float64, keep_source_depth=True)
    record["width_preservation_fp64"] = measure_preservation(
        width_only.source_discriminator, width_only.models.discriminator, width_only.hidden_index, batch
    ).as_dict()
    progress("measuring the step-0 loss before and after the depth change (held-out batches)")
    before = width_only.models.to(torch.float32)  # fp32 like the written model (and 2x cheaper than fp64 on a CPU)
    record["step0_loss"] = step0_loss_change(before, result.models, spec, growth.seed, tokenizer)
    progress("writing")
    with staged_dir(out) as tmp:
        save_models(result.models, tmp, tokenizer)
        record["sha256"] = {name: sha256_file(tmp / name) for name in WEIGHT_FILES if (tmp / name).is_file()}
        (tmp / GROWTH_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        write_model_card(tmp, data=data, name=Path(out).name)
    return record


def step0_loss_change(
    before: PretrainingModels, after: PretrainingModels, spec: ModelSpec, seed: int, tokenizer
) -> dict[str, dict[str, float]]:
    """The run objective's held-out loss (and its parts) of the width-only model (= the source's function) and of
    the written model: what the depth change (stacking, ALBERT's shared layer) costs at step 0. Same batches, same
    seeded masks; the ELECTRA loss also depends on the generator's samples, so its parts are recorded too."""
    cfg = RunConfig(model=spec, objective=ObjectiveSpec(name=spec.architecture), data=DataSpec(seq_len=LOSS_SEQ_LEN))
    heldout = build_heldout_batches(cfg.data, tokenizer, LOSS_BATCH_SIZE, spec.architecture, LOSS_BATCHES)
    keep = ("loss", "mlm_loss", "disc_loss", "sop_loss")
    out = {}
    for name, models in (("before_depth_change", before), ("after_depth_change", after)):
        metrics = build_objective(cfg, models, mask_token_id=tokenizer.mask_token_id, seed=seed).evaluate(heldout)
        out[name] = {k: v for k, v in metrics.items() if k in keep}
    return out


def grow_run_initial_state(cfg: RunConfig, out_dir: str | Path) -> Path:
    """The run's checkpoint 0 for the coordinator: ``cfg.growth`` applied to ``cfg.model``, written at ``out_dir``."""
    grow_to_dir(cfg.growth.source, cfg.model, cfg.growth, out_dir, data=cfg.data)
    return Path(out_dir)
