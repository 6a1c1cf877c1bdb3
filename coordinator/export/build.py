"""``export(source, options, out)``: one derived form of a checkpoint, written whole or not at all.

Recipe: check the options and the paths (before anything heavy, so bad input is one line and nothing written) ->
read and verify the source -> load its models -> write the form into ``.<out>.tmp-<pid>/`` beside ``out`` ->
the tokenizer -> ``export.json`` (the form, its options and results, and the source: path, step, run, sha256) ->
the model card hook -> rename to ``out``. The optimizer state is never read, so it never reaches an export.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from coordinator.export.source import ExportSource, read_source
from peer.errors import UserError
from peer.run.writable_dir import check_empty_out, staged_dir

logger = logging.getLogger(__name__)

FORMS = ("bf16", "int8", "bert2bert", "pruned", "distilled")
NOTE_FILE = "export.json"


@dataclass(frozen=True)
class ExportOptions:
    form: str
    fraction: float = 0.25  # pruned: share of all attention heads removed
    steps: int = 200  # distilled: optimizer steps of the student
    config: str | None = None  # run config YAML: the corpus (data) and the objective; None = the defaults
    seed: int = 0
    batch_size: int = 8  # pruned (importance) and distilled (training) batches
    batches: int = 8  # pruned: batches the head importance is averaged over; distilled: held-out batches scored
    lr: float = 1e-4  # distilled
    temperature: float = 2.0  # distilled: of the soft targets
    student_layers: int | None = None  # distilled: the student's depth; None: half the teacher's (DistilBERT)


@dataclass
class ExportNote:
    """What ``export.json`` holds, and what a model card writer is handed."""

    form: str
    source: ExportSource
    options: ExportOptions
    result: dict = field(default_factory=dict)  # the form's own figures (sizes, heads removed, losses)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "form": self.form,
            "source": self.source.to_dict(),
            "options": asdict(self.options),
            "result": self.result,
            "seconds": round(self.seconds, 2),
        }


CardWriter = Callable[[Path, ExportNote], None]  # writes README.md into the export dir (export.card)


def check_options(options: ExportOptions) -> None:
    if options.form not in FORMS:
        raise UserError(f"unknown --form {options.form!r} (known: {', '.join(FORMS)})")
    if not 0.0 < options.fraction < 1.0:
        raise UserError(f"--fraction must be in (0, 1), got {options.fraction}")
    if options.student_layers is not None and options.student_layers < 1:
        raise UserError(f"--student_layers must be at least 1, got {options.student_layers}")
    if options.steps < 1 or options.batch_size < 1 or options.batches < 1:
        raise UserError("--steps, --batch_size and --batches must be at least 1")
    if options.config is not None and not Path(options.config).is_file():
        raise UserError(f"config file not found: {options.config}")


def export(
    src: str | Path, options: ExportOptions, out: str | Path, write_card: CardWriter | None = None
) -> ExportNote:
    """Writes ``options.form`` of the model at ``src`` into ``out`` (which must not exist or be empty) and returns
    its note. ``write_card(tmp_dir, note)``, if given, runs last inside the temp dir, so the card is part of the
    atomic rename."""
    out = Path(out)
    check_options(options)
    check_empty_out(out, "--out")
    source = read_source(src)
    _check_form_fits(options.form, source)
    started = time.perf_counter()
    models, tokenizer = source.load()
    from peer.config import load_config

    cfg = load_config(options.config)
    cfg.model.architecture = cfg.objective.name = source.architecture
    with staged_dir(out) as tmp:
        result = _write_form(options, models, tokenizer, cfg, tmp)
        tokenizer.save_pretrained(tmp)
        note = ExportNote(options.form, source, options, result, time.perf_counter() - started)
        (tmp / NOTE_FILE).write_text(json.dumps(note.to_dict(), indent=2, sort_keys=True) + "\n")
        if write_card is not None:
            write_card(tmp, note)
    logger.info("wrote the %s export of %s to %s in %.1f s", options.form, source.path, out, note.seconds)
    return note


def _check_form_fits(form: str, source: ExportSource) -> None:
    if form in ("bert2bert", "distilled") and source.architecture != "electra":
        why = {
            "bert2bert": "transformers has no ALBERT decoder to warm-start",
            "distilled": "an ALBERT's layers share one set of weights, so half the layers saves no parameters",
        }[form]
        raise UserError(f"--form {form} needs an ELECTRA source, {source.path} is {source.architecture}: {why}")


def _write_form(options: ExportOptions, models, tokenizer, cfg, out: Path) -> dict:
    if options.form == "bf16":
        from coordinator.export.precision import write_bf16

        return write_bf16(models.discriminator, out)
    if options.form == "int8":
        from coordinator.export.precision import write_int8

        return write_int8(models.discriminator, out)
    if options.form == "bert2bert":
        from coordinator.export.bert2bert import write_bert2bert

        return write_bert2bert(models.discriminator, tokenizer, out, seed=options.seed)
    if options.form == "pruned":
        from coordinator.export.pruning import write_pruned

        return write_pruned(models, tokenizer, cfg, out, options)
    from coordinator.export.distill import write_distilled

    return write_distilled(models, tokenizer, cfg, out, options)
