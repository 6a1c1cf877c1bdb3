"""The model card (``README.md``) of an export: the card of the checkpoint it was made from (``coordinator.card``:
source model and licence as ``base_model``, growth, training, data attribution), plus what the export is and the
one way to load it.

Why the checkpoint's facts: an export is the same trained model in another form, so its licence, its source model and
its data terms are the checkpoint's; they are read from the source dir (``growth.json``, ``training_state.json``),
which the export itself does not carry.
"""

from __future__ import annotations

from pathlib import Path

from coordinator.card import build_model_card
from coordinator.export.build import ExportNote
from peer.config import DataSpec
from peer.run.model_card import write_card

WHAT = {
    "bf16": "every weight in bfloat16 (half the bytes of float32)",
    "int8": "linear layers and embedding tables as int8 with a float32 scale per row (biases and LayerNorms float32);"
    " the model code that reads this format ships in the directory (`modeling_int8.py`)",
    "bert2bert": "an encoder-decoder warm-started from the discriminator (Rothe et al. 2020): encoder and decoder start"
    " as copies of it, the decoder's cross-attention is new; fine-tune it on a sequence-to-sequence task before use",
    "pruned": "the least important attention heads removed (Michel et al. 2019); the model code that loads the pruned"
    " shapes ships in the directory (`modeling_pruned.py`)",
    "distilled": "a half-depth student (every other layer of the teacher) distilled on the run's corpus (DistilBERT's"
    " soft-target and hidden-cosine loss)",
}

LOADERS = {
    "bf16": ["import torch", "from transformers import AutoModelForPreTraining, AutoTokenizer", "",
             'model = AutoModelForPreTraining.from_pretrained("PATH", dtype=torch.bfloat16)'],
    "int8": ["from transformers import AutoModelForPreTraining, AutoTokenizer", "",
             'model = AutoModelForPreTraining.from_pretrained("PATH", trust_remote_code=True)  # modeling_int8.py'],
    "pruned": ["from transformers import AutoModelForPreTraining, AutoTokenizer", "",
               'model = AutoModelForPreTraining.from_pretrained("PATH", trust_remote_code=True)'],
    "bert2bert": ["from transformers import AutoTokenizer, EncoderDecoderModel", "",
                  'model = EncoderDecoderModel.from_pretrained("PATH")',
                  'ids = model.generate(**tokenizer("some text", return_tensors="pt"), max_new_tokens=32)'],
    "distilled": ["from transformers import AutoModelForPreTraining, AutoTokenizer", "",
                  'model = AutoModelForPreTraining.from_pretrained("PATH")'],
}  # fmt: skip


def _about(note: ExportNote) -> str:
    source = note.source
    weights = note.result.get("weight_bytes")
    lines = [
        f"## This export: {note.form}",
        "",
        f"The `{note.form}` form of `{source.path.name}` ({source.kind}, step {source.step}): {WHAT[note.form]}.",
        "Written by warmswarm's `coordinator.export` (the `export` command, or a coordinator building it in the "
        "background); `export.json` records the options and figures.",
    ]
    if weights:
        lines.append(f"Weights: {weights / 1e6:.1f} MB.")
    if source.weights_sha256:
        lines.append(f"Made from `model.safetensors` with sha256 `{source.weights_sha256}`.")
    return "\n".join(lines)


def _usage(form: str) -> str:
    lines = list(LOADERS[form])
    lines.insert(lines.index("") + 1, 'tokenizer = AutoTokenizer.from_pretrained("PATH")')
    return "\n".join(["## How to load it", "", "```python", *lines, "```"])


def write_export_card(out: Path, note: ExportNote, data: DataSpec | None = None) -> Path:
    """Writes ``README.md`` into the export dir ``out`` (an ``export()`` card hook)."""
    source = note.source
    name = f"{source.run_id or source.path.name}-step{source.step}-{note.form}"
    card = build_model_card(out, data=data, name=name, provenance_dir=source.path, about=_about(note),
                            usage=_usage(note.form), tags=(f"export-{note.form}",))  # fmt: skip
    return write_card(out, card)
