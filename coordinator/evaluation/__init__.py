"""Downstream evaluation of a checkpoint (``python -m coordinator evaluate``), against its source model and a random
init of its architecture.

- ``tasks`` — the labelled data (gensim's wheel) and its fixed splits; no torch.
- ``spec`` — what is asked: tasks, references, seeds, the fine-tuning budget; no torch.
- ``results`` — the typed, JSON-serialisable report and its summary table; no torch.
- ``encoders`` — loading the three models; the frozen bottom / trainable top split of an encoder.
- ``finetune`` — one (task, model, seed) fine-tuning and its test scores.
- ``heldout`` — the pretraining objective's held-out metrics (``peer.data`` + ``peer.objectives``).
- ``run`` — ``evaluate_checkpoint``: the recipe over models, tasks and seeds.
- ``cli`` — the ``evaluate`` subcommand.

Importing this package imports nothing heavy, so ``coordinator.card`` can read ``results`` cheaply.
"""
