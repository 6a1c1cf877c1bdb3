"""``pruned``: the least important attention heads removed (Michel et al. 2019, "Are Sixteen Heads Really Better
than One?").

A head's importance is E|dL/dξ_h|: the gradient of the run's own pretraining loss (``peer.objectives``: ELECTRA's
generator MLM + λ·discriminator loss, ALBERT's MLM + SOP) with respect to a gate ξ_h = 1 on the head's output,
averaged over a few training batches of the run's corpus (``peer.data``), then normalised per layer (L2). transformers
5 has no ``head_mask`` any more, so the gate is a pre-hook on each attention's output projection. The heads with
the lowest scores, ``fraction`` of all of them (every layer keeps at least one), are removed with
``hf_code/modeling_pruned.prune_heads``, the code the export carries to load itself.
"""

from __future__ import annotations

import copy
import itertools
import logging
from pathlib import Path

import torch
from torch import nn

from coordinator.export.hf_code import modeling_pruned
from coordinator.export.hf_code.modeling_pruned import attention_blocks, prune_heads
from coordinator.export.precision import carry_code, parameter_count, weight_bytes

logger = logging.getLogger(__name__)


def head_importance(model: nn.Module, loss_fn, batches) -> torch.Tensor:
    """[blocks, heads] mean |d loss / d gate| over ``batches``, each row divided by its L2 norm. ``loss_fn(batch)``
    runs ``model`` (and whatever else the loss needs) and returns the loss; only the gates get gradients."""
    blocks = attention_blocks(model)
    gates = [torch.ones(attn.num_attention_heads, requires_grad=True) for attn, _, _ in blocks]
    hooks = []
    for (attn, owner, name), gate in zip(blocks, gates, strict=True):

        def scale(_module, args, gate=gate, size=attn.attention_head_size):
            (x,) = args
            heads = x.unflatten(-1, (-1, size)) * gate.to(x.dtype)[:, None]
            return (heads.flatten(-2),)

        hooks.append(getattr(owner, name).register_forward_pre_hook(scale))
    total = torch.zeros(len(blocks), max(g.numel() for g in gates))
    n = 0
    try:
        for batch in batches:
            loss_fn(batch).backward()
            for i, gate in enumerate(gates):
                total[i, : gate.numel()] += gate.grad.abs()
                gate.grad = None
            n += 1
    finally:
        for hook in hooks:
            hook.remove()
    scores = total / max(n, 1)
    return scores / scores.norm(dim=1, keepdim=True).clamp(min=1e-12)


def choose_heads(importance: torch.Tensor, heads_per_block: list[int], fraction: float) -> dict[int, list[int]]:
    """{block: [heads to remove]}: round(fraction × all heads) of the lowest-scoring heads, never a block's last."""
    total = sum(heads_per_block)
    budget = round(fraction * total)
    left = list(heads_per_block)
    chosen: dict[int, list[int]] = {}
    ranked = sorted(
        ((float(importance[b, h]), b, h) for b, n in enumerate(heads_per_block) for h in range(n)),
        key=lambda t: (t[0], t[1], t[2]),
    )
    for _, block, head in ranked:
        if budget == 0:
            break
        if left[block] == 1:
            continue
        chosen.setdefault(block, []).append(head)
        left[block] -= 1
        budget -= 1
    return {b: sorted(h) for b, h in sorted(chosen.items())}


def write_pruned(models, tokenizer, cfg, out: Path, options) -> dict:
    """Scores the heads of ``models.discriminator`` on ``options.batches`` training batches, removes
    ``options.fraction`` of them and saves the result with its loader code."""
    from peer.data import build_train_batches, check_seq_len
    from peer.objectives import build_objective

    scored = copy.deepcopy(models)  # the gates' hooks and frozen parameters stay on this copy
    for p in scored.parameters():
        p.requires_grad_(False)
    check_seq_len(cfg.data, scored.discriminator.config.max_position_embeddings)
    objective = build_objective(cfg, scored, mask_token_id=tokenizer.mask_token_id, seed=options.seed)
    stream = build_train_batches(cfg.data, tokenizer, options.batch_size, cfg.model.architecture, options.seed)
    batches = itertools.islice(stream, options.batches)
    logger.info("scoring attention heads on %d batches of %d", options.batches, options.batch_size)
    importance = head_importance(scored.discriminator, lambda b: objective(b).loss, batches)

    model = copy.deepcopy(models.discriminator)
    before = [attn.num_attention_heads for attn, _, _ in attention_blocks(model)]
    heads = choose_heads(importance, before, options.fraction)
    params_before = parameter_count(model)
    prune_heads(model, heads)
    model.config.pruned_heads = {str(b): h for b, h in heads.items()}
    arch = model.config.model_type.capitalize()
    carry_code(model, modeling_pruned, {"AutoModel": f"Pruned{arch}Model",
                                        "AutoModelForPreTraining": f"Pruned{arch}ForPreTraining"}, out)  # fmt: skip
    model.save_pretrained(out)
    after = [attn.num_attention_heads for attn, _, _ in attention_blocks(model)]
    return {
        "heads_before": sum(before),
        "heads_after": sum(after),
        "heads_per_block": after,
        "removed": {str(b): h for b, h in heads.items()},
        "importance": [[round(float(v), 6) for v in row[:n]] for row, n in zip(importance, before, strict=True)],
        "parameters_before": params_before,
        "parameters": parameter_count(model),
        "weight_bytes": weight_bytes(out),
    }
