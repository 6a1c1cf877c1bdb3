"""Exports: the forms of a checkpoint that people deploy (``python -m coordinator export SRC --form FORM --out DIR``).

- ``build`` — ``export()``: checks, the temp dir and its rename, ``export.json`` (the source note), the card hook;
- ``source`` — what an export is made from (a checkpoint or a ``peer grow`` output) and its provenance;
- ``precision`` — ``bf16`` and ``int8``; ``bert2bert`` — the warm-started encoder-decoder;
- ``pruning`` — attention heads removed by importance; ``distill`` — the half-depth student;
- ``hf_code/`` — the model code that the int8 and pruned exports carry, to load with plain transformers.

Every export holds the model, the tokenizer and ``export.json``; never the optimizer state.
"""

from coordinator.export.build import FORMS, NOTE_FILE, CardWriter, ExportNote, ExportOptions, check_options, export

__all__ = ["FORMS", "NOTE_FILE", "CardWriter", "ExportNote", "ExportOptions", "check_options", "export"]
