"""What an export costs in quality: its encoder on the evaluation's downstream tasks, beside the checkpoint it was
exported from (``python -m coordinator evaluate EXPORT_DIR``).

Why the loaders here and not ``trust_remote_code``: the int8 and pruned exports carry their model code for users,
but evaluating a downloaded export must not run code that came with it. The classes are this package's own
(``hf_code``), the same files an export carries, so the weights load exactly as a user's ``AutoModel`` loads them.

Per form:
- ``bf16``: the bf16 weights, computed in float32 (the evaluation's fine-tuning runs in float32 on a CPU), so the
  score change is the weights' rounding alone;
- ``int8``: linear layers on the int8 kernel (the evaluation's frozen features run under ``no_grad``, where
  ``Int8Linear`` uses fbgemm's dynamic int8, as a deployed model does). Its weights are buffers, not parameters, so
  fine-tuning its top layer would train only biases and LayerNorms: int8 is evaluated on frozen features
  (``--train-layers 0``), and so must its baseline be;
- ``pruned`` and ``distilled``: plain float32 encoders, any budget;
- ``bert2bert``: a sequence-to-sequence model, not an encoder (``bench/seq2seq_warm_start.py`` measures it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from coordinator.evaluation.encoders import Encoder, backbone, load_checkpoint, load_tokenizer
from coordinator.evaluation.results import EvaluationReport
from coordinator.evaluation.run import evaluate_models
from coordinator.evaluation.spec import CHECKPOINT, EXPORTED_FROM, RANDOM_INIT, SOURCE, EvaluationSpec
from coordinator.export.build import NOTE_FILE
from peer.errors import UserError

ENCODER_FORMS = ("bf16", "int8", "pruned", "distilled")


def is_export(path: str | Path) -> bool:
    return (Path(path) / NOTE_FILE).is_file()


def read_note(path: str | Path) -> dict:
    note_path = Path(path) / NOTE_FILE
    try:
        note = json.loads(note_path.read_text())
        note["form"], note["source"]["path"]  # noqa: B018 - the two keys everything below reads
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"unreadable export note {note_path}: {e}") from None
    return note


def load_export_encoder(path: str | Path) -> Encoder:
    """The export's encoder (an HF base model in eval mode) with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForPreTraining

    path = Path(path)
    form = read_note(path)["form"]
    if form not in ENCODER_FORMS:
        raise UserError(f"{path} is a {form} export, not an encoder (bench/seq2seq_warm_start.py measures bert2bert)")
    try:
        if form in ("int8", "pruned"):
            config = AutoConfig.from_pretrained(path)
            model = _carried_class(form, config.model_type).from_pretrained(path)
        else:
            model = AutoModelForPreTraining.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the {form} export {path}: {str(e).splitlines()[0]}") from None
    return Encoder(CHECKPOINT, f"{form} export {path.name}", backbone(model).float().eval(), load_tokenizer(path))


def _carried_class(form: str, model_type: str):
    from coordinator.export.hf_code import modeling_int8, modeling_pruned

    module = modeling_int8 if form == "int8" else modeling_pruned
    # the class the export was saved as (its discriminator head too), so loading reports no unexpected weights
    name = f"{'Int8' if form == 'int8' else 'Pruned'}{model_type.capitalize()}ForPreTraining"
    if not hasattr(module, name):
        raise UserError(f"a {form} export of a {model_type!r} model is not supported")
    return getattr(module, name)


def evaluate_export(path: str | Path, spec: EvaluationSpec, progress: Callable[[str], None]) -> EvaluationReport:
    """The export and, with the ``exported_from`` reference, the checkpoint it names, under one budget and the
    same seeds; the difference of their scores is what the export costs."""
    path = Path(path)
    note = read_note(path)
    unsupported = [r for r in spec.references if r in (SOURCE, RANDOM_INIT)]
    if unsupported:
        raise UserError(f"--references {unsupported[0]} is for checkpoints; an export's reference is {EXPORTED_FROM}")
    if note["form"] == "int8" and spec.budget.train_layers:
        raise UserError("an int8 export's weights are not trainable: evaluate it on frozen features, --train-layers 0")
    loaders = [lambda: load_export_encoder(path)]
    if EXPORTED_FROM in spec.references:
        source = Path(note["source"]["path"])
        if not source.is_dir():
            raise UserError(f"the checkpoint {path.name} was exported from ({source}) is gone: use --references none")
        loaders.append(lambda: _checkpoint_encoder(source))
    spec = replace(spec, heldout_batches=0)
    step = note["source"].get("step")
    return evaluate_models(str(path), step if isinstance(step, int) else 0, loaders, spec, progress)


def _checkpoint_encoder(path: Path) -> Encoder:
    models = load_checkpoint(path)
    return Encoder(EXPORTED_FROM, str(path), backbone(models.discriminator), load_tokenizer(path))
