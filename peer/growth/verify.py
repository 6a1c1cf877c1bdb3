"""Measuring how well a grown model preserves its source's function: what tests assert and ``growth.json`` records.

The probe batch has padding and both token types, because a growth bug in the attention mask path or the
token-type table would hide behind a batch of equal-length single sentences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

PROBE_TEXTS = [
    ("The committee approved the new budget after a long debate.", "Funding for the library was doubled."),
    ("Volunteers trained the model together over the internet.", "Nobody owned all the machines."),
    ("Short one.", "Tiny."),
]


def probe_batch(tokenizer) -> dict[str, torch.Tensor]:
    """Sentence pairs padded to the longest: padding masks and token types 0/1 both present."""
    firsts, seconds = zip(*PROBE_TEXTS, strict=True)
    enc = tokenizer(list(firsts), list(seconds), padding=True, return_tensors="pt")
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


@dataclass
class Preservation:
    hidden_rel_l2: float  # ||target hidden - source hidden[..., index]|| / ||source hidden[..., index]||
    logits_rel_l2: float  # the main head, target vs source with the same (grown) head: RTD (ELECTRA), MLM (ALBERT)
    sop_logits_rel_l2: float | None = None  # ALBERT's sentence-order head

    def as_dict(self) -> dict[str, float]:
        out = {"hidden_rel_l2": self.hidden_rel_l2, "logits_rel_l2": self.logits_rel_l2}
        if self.sop_logits_rel_l2 is not None:
            out["sop_logits_rel_l2"] = self.sop_logits_rel_l2
        return out


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def main_logits(output) -> torch.Tensor:
    """``ElectraForPreTraining``'s RTD logits or ``AlbertForPreTraining``'s MLM logits."""
    return output.logits if hasattr(output, "logits") else output.prediction_logits


@torch.no_grad()
def measure_preservation(
    source: nn.Module, target: nn.Module, hidden_index: torch.Tensor, batch: dict[str, torch.Tensor]
) -> Preservation:
    """Both models are ELECTRA discriminators (``ElectraForPreTraining``) or both ``AlbertForPreTraining``, in eval
    mode and the same dtype."""
    s = source(**batch, output_hidden_states=True)
    t = target(**batch, output_hidden_states=True)
    sop = getattr(s, "sop_logits", None)
    return Preservation(
        hidden_rel_l2=rel_l2(t.hidden_states[-1], s.hidden_states[-1][..., hidden_index]),
        logits_rel_l2=rel_l2(main_logits(t), main_logits(s)),
        sop_logits_rel_l2=None if sop is None else rel_l2(t.sop_logits, sop),
    )
