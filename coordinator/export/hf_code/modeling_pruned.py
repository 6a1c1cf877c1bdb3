"""Attention heads removed from a BERT-family model (ELECTRA, ALBERT): the loader that a warmswarm ``pruned`` export
carries. Needs only ``torch`` and ``transformers``.

transformers 5 dropped ``prune_heads`` and the ``pruned_heads`` config entry, so a model whose layers keep different
numbers of heads no longer loads by itself. ``config.pruned_heads`` ({attention block: [removed heads]}, blocks
numbered as ``attention_blocks`` lists them) says which heads are gone; these classes build the model, remove those
heads from its query/key/value and output projections, then ``from_pretrained`` loads the smaller weights.

    from transformers import AutoModel
    model = AutoModel.from_pretrained(DIR, trust_remote_code=True)   # or AutoModelForPreTraining
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AlbertForPreTraining, AlbertModel, ElectraForPreTraining, ElectraModel
from transformers.pytorch_utils import prune_linear_layer


def attention_blocks(model: nn.Module) -> list[tuple[nn.Module, nn.Module, str]]:
    """Each distinct self-attention of ``model`` (an ELECTRA or ALBERT model, with or without heads) as (the module
    holding ``query``/``key``/``value`` and the head counts, the module holding the output projection, its
    attribute name). An ALBERT layer that is shared across depth is one block."""
    base = getattr(model, model.base_model_prefix, model)
    encoder = base.encoder
    if hasattr(encoder, "layer"):  # ELECTRA / BERT
        return [(layer.attention.self, layer.attention.output, "dense") for layer in encoder.layer]
    if hasattr(encoder, "albert_layer_groups"):
        return [(layer.attention, layer.attention, "dense")
                for group in encoder.albert_layer_groups for layer in group.albert_layers]  # fmt: skip
    raise TypeError(f"{type(model).__name__}: no BERT-style attention layers")


def prune_heads(model: nn.Module, heads: dict[int, list[int]]) -> None:
    """Removes ``heads[block]`` (indices among the block's current heads) from each attention block of ``model``,
    in place: the rows of query/key/value and the columns of the output projection that belong to them. A block keeps
    at least one head."""
    blocks = attention_blocks(model)
    for block, removed in heads.items():
        attn, out_owner, out_name = blocks[int(block)]
        size = attn.attention_head_size
        keep = [h for h in range(attn.num_attention_heads) if h not in set(removed)]
        if not keep:
            raise ValueError(f"attention block {block} would lose all its heads")
        if len(keep) == attn.num_attention_heads:
            continue
        index = torch.cat([torch.arange(h * size, (h + 1) * size) for h in keep]).to(attn.query.weight.device)
        attn.query = prune_linear_layer(attn.query, index)
        attn.key = prune_linear_layer(attn.key, index)
        attn.value = prune_linear_layer(attn.value, index)
        setattr(out_owner, out_name, prune_linear_layer(getattr(out_owner, out_name), index, dim=1))
        attn.num_attention_heads = len(keep)
        attn.all_head_size = len(keep) * size


def _prune_from_config(model: nn.Module) -> None:
    prune_heads(model, {int(k): v for k, v in (getattr(model.config, "pruned_heads", None) or {}).items()})


class PrunedElectraForPreTraining(ElectraForPreTraining):
    def __init__(self, config):
        super().__init__(config)
        _prune_from_config(self)


class PrunedElectraModel(ElectraModel):
    def __init__(self, config):
        super().__init__(config)
        _prune_from_config(self)


class PrunedAlbertForPreTraining(AlbertForPreTraining):
    def __init__(self, config):
        super().__init__(config)
        _prune_from_config(self)


class PrunedAlbertModel(AlbertModel):
    def __init__(self, config):
        super().__init__(config)
        _prune_from_config(self)
