"""``bert2bert``: a sequence-to-sequence model warm-started from the discriminator (Rothe et al. 2020, "Leveraging
Pre-trained Checkpoints for Sequence Generation Tasks"; transformers' ``EncoderDecoderModel``).

Encoder and decoder both start as copies of the discriminator's encoder (not shared). New, so random (seeded):
the decoder's cross-attention and the transform of its LM head; its output projection is tied to its word table.
Generation starts from [CLS] and stops at [SEP], padding with [PAD], as the warm-starting recipe for BERT
vocabularies does, so ``EncoderDecoderModel.from_pretrained(out).generate(**tokenizer(text, return_tensors="pt"))``
works as soon as it is written (its output means something only after fine-tuning on a seq2seq task).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from transformers import ElectraForCausalLM, ElectraModel, EncoderDecoderModel, GenerationConfig

from coordinator.export.precision import parameter_count, weight_bytes


def warm_start(discriminator: nn.Module, tokenizer, seed: int = 0) -> EncoderDecoderModel:
    encoder_state = discriminator.electra.state_dict()
    torch.manual_seed(seed)
    encoder = ElectraModel(copy.deepcopy(discriminator.config))
    encoder.load_state_dict(encoder_state)
    decoder_config = copy.deepcopy(discriminator.config)
    decoder_config.is_decoder = True
    decoder_config.add_cross_attention = True
    decoder = ElectraForCausalLM(decoder_config)
    missing, unexpected = decoder.electra.load_state_dict(encoder_state, strict=False)
    if unexpected or any(".crossattention." not in k for k in missing):
        raise RuntimeError(f"decoder warm start: unexpected {unexpected}, missing {missing}")  # a transformers change
    decoder.tie_weights()
    model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
    tokens = {
        "decoder_start_token_id": tokenizer.cls_token_id,
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    for key, value in tokens.items():
        setattr(model.config, key, value)
    model.config.vocab_size = decoder_config.vocab_size
    model.generation_config = GenerationConfig(**tokens)
    return model.eval()


def write_bert2bert(discriminator: nn.Module, tokenizer, out: Path, seed: int = 0) -> dict:
    model = warm_start(discriminator, tokenizer, seed)
    model.save_pretrained(out)
    new = sum(p.numel() for n, p in model.decoder.named_parameters()
              if ".crossattention." in n or n.startswith("generator_predictions."))  # fmt: skip
    return {"weight_bytes": weight_bytes(out), "parameters": parameter_count(model), "new_parameters": new}
