"""``distilled``: a DistilBERT-style student of the discriminator (Sanh et al. 2019): half the layers, initialised
from every other layer of the teacher (0, 2, 4, ...; embeddings and head copied), trained on the run's corpus. Another
depth (``student_layers``) takes the teacher's layers evenly spaced from the first (2 of 6: 0 and 3).

The student sees what the teacher was trained on: text corrupted by the run's generator (``peer.objectives.
electra.corrupt``). Its loss per real token: the soft-target loss (KL divergence from the teacher's
replaced-token probability at temperature T, × T²) + the hidden-state cosine loss (1 - cos between the student's and
the teacher's last hidden states), as DistilBERT's, with the teacher's head in place of an MLM head.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from coordinator.export.precision import parameter_count, weight_bytes
from peer.errors import UserError

logger = logging.getLogger(__name__)


def student_layer_indices(teacher_layers: int, student_layers: int | None = None) -> list[int]:
    """The teacher's layers a student keeps: None, every other one from layer 0 (DistilBERT's rule: 0, 2, 4, ...);
    else ``student_layers`` of them evenly spaced from layer 0 (``i * L // n``: 2 of 6 are 0 and 3, 3 of 6 are 0, 2,
    4). The bottom layer always stays, since the embeddings it reads are copied unchanged."""
    if student_layers is None:
        return list(range(0, teacher_layers, 2))
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"a student of {student_layers} layers from a teacher of {teacher_layers}")
    return [i * teacher_layers // student_layers for i in range(student_layers)]


def student_from_teacher(teacher: nn.Module, student_layers: int | None = None) -> nn.Module:
    """A copy of ``teacher`` (an ``ElectraForPreTraining``) with the layers ``student_layer_indices`` picks only."""
    config = copy.deepcopy(teacher.config)
    layers = student_layer_indices(config.num_hidden_layers, student_layers)
    config.num_hidden_layers = len(layers)
    student = type(teacher)(config)
    state = {}
    for key, value in teacher.state_dict().items():
        prefix = "electra.encoder.layer."
        if key.startswith(prefix):
            index, rest = key[len(prefix) :].split(".", 1)
            if int(index) not in layers:
                continue
            key = f"{prefix}{layers.index(int(index))}.{rest}"
        state[key] = value.clone()
    student.load_state_dict(state)
    return student


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    weight: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Soft-target + hidden-cosine loss over the tokens where ``weight`` [B, L] is 1; both parts are 0 when the
    student equals the teacher. The soft-target part is the KL divergence between the two replaced-token
    distributions at ``temperature`` (cross-entropy minus the teacher's entropy), × T² as in Hinton et al."""
    w = weight.float()
    n = w.sum().clamp(min=1)
    target = torch.sigmoid(teacher_logits / temperature)
    cross = F.binary_cross_entropy_with_logits(student_logits / temperature, target, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(teacher_logits / temperature, target, reduction="none")
    soft = ((cross - entropy) * w).sum() / n * temperature**2
    cosine = ((1 - F.cosine_similarity(student_hidden, teacher_hidden, dim=-1)) * w).sum() / n
    return soft + cosine, {"soft_loss": soft.detach(), "cosine_loss": cosine.detach()}


def write_distilled(models, tokenizer, cfg, out: Path, options) -> dict:
    from peer.data import build_heldout_batches, build_train_batches, check_seq_len
    from peer.modeling import PretrainingModels
    from peer.objectives import build_objective
    from peer.objectives.electra import corrupt

    teacher = models.discriminator
    for p in models.parameters():
        p.requires_grad_(False)
    check_seq_len(cfg.data, teacher.config.max_position_embeddings)
    torch.manual_seed(options.seed)
    if options.student_layers is not None and options.student_layers > teacher.config.num_hidden_layers:
        raise UserError(f"--student_layers {options.student_layers}: the teacher has only "
                        f"{teacher.config.num_hidden_layers} layers")  # fmt: skip
    student = student_from_teacher(teacher, options.student_layers).train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=options.lr, weight_decay=0.01)
    rng = torch.Generator().manual_seed(options.seed)
    spec = cfg.objective
    stream = build_train_batches(cfg.data, tokenizer, options.batch_size, "electra", options.seed)
    started, last = time.perf_counter(), {}
    for step in range(1, options.steps + 1):
        batch = next(stream)
        with torch.no_grad():
            c = corrupt(models, batch, rng, spec.mask_prob, tokenizer.mask_token_id, spec.static_masking)
            inputs = {"input_ids": c.disc_input, "attention_mask": batch["attention_mask"],
                      "token_type_ids": batch["token_type_ids"]}  # fmt: skip
            t = teacher(**inputs, output_hidden_states=True)
        s = student(**inputs, output_hidden_states=True)
        loss, parts = distillation_loss(
            s.logits, t.logits, s.hidden_states[-1], t.hidden_states[-1], c.candidates, options.temperature
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        last = {"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}}
        if step == 1 or step % 10 == 0 or step == options.steps:
            seconds = time.perf_counter() - started
            logger.info("distil step %d/%d: loss %.4f (soft %.4f, cosine %.4f), %.1f s", step, options.steps,
                        last["loss"], last["soft_loss"], last["cosine_loss"], seconds)  # fmt: skip
    student.eval()
    student.save_pretrained(out)
    heldout = build_heldout_batches(cfg.data, tokenizer, options.batch_size, "electra", options.batches)
    held = {}
    for name, disc in (("teacher", teacher), ("student", student)):
        metrics = build_objective(cfg, PretrainingModels(disc, models.generator), tokenizer.mask_token_id,
                                  options.seed).evaluate(heldout)  # fmt: skip
        held[name] = {k: round(metrics[k], 6) for k in ("disc_loss", "disc_auc", "disc_accuracy") if k in metrics}
    return {
        "layers_teacher": teacher.config.num_hidden_layers,
        "layers": student.config.num_hidden_layers,
        "parameters_teacher": parameter_count(teacher),
        "parameters": parameter_count(student),
        "weight_bytes": weight_bytes(out),
        "final_train": {k: round(v, 6) for k, v in last.items()},
        "heldout": held,
    }
