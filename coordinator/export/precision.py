"""The same model in fewer bits: ``bf16`` (plain transformers) and ``int8`` (linear layers and embedding tables as
int8 with a scale per row, loaded through the code it carries, ``hf_code/modeling_int8.py``).

Why not torchao or ONNX Runtime (issue 23 names both): optimum-onnx 0.1 requires transformers < 4.58 and this
project is on transformers 5; torchao 0.18 installs, but once installed every ``from_pretrained`` of every process
imports it (~4 s of CPU and two failed extension loads on stderr for torch 2.13), its weight-only int8 ran 1.3x
slower than fp32 on the 2-core CPU and its dynamic int8 4.5x slower, and transformers 5.25's FqnToConfig path
quantizes biases too. The format here is plain safetensors (int8 + float32 scales) and runs linear layers on
torch's fbgemm dynamic int8 kernel on a CPU (bench/README.md has the figures).
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch
from torch import nn

from coordinator.export.hf_code import modeling_int8

WEIGHTS = "model.safetensors"


def weight_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def carry_code(model: nn.Module, module, classes: dict[str, str], out: Path) -> None:
    """Points ``model.config`` at ``classes`` ({Auto class: class name}) in ``module``'s file and copies that file
    into ``out``, so ``AutoX.from_pretrained(out, trust_remote_code=True)`` builds them."""
    name = Path(module.__file__).stem
    model.config.auto_map = {auto: f"{name}.{cls}" for auto, cls in classes.items()}
    model.config.architectures = [classes["AutoModelForPreTraining"]]
    shutil.copyfile(module.__file__, out / f"{name}.py")


def write_bf16(model: nn.Module, out: Path) -> dict:
    """Every floating tensor as bfloat16; ``from_pretrained(out, dtype=torch.bfloat16)`` loads it as such."""
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    bf16.save_pretrained(out)
    return {"weight_bytes": weight_bytes(out), "parameters": parameter_count(bf16)}


def write_int8(model: nn.Module, out: Path) -> dict:
    """Every embedding table and every linear layer with more than one output as int8 (``modeling_int8``'s format);
    biases and LayerNorms stay float32."""
    q = copy.deepcopy(model).float()
    if getattr(q.config, "tie_word_embeddings", False) and q.get_output_embeddings() is not None:
        q.config.tie_word_embeddings = False  # ALBERT's MLM decoder becomes its own int8 copy of the word table
    names = modeling_int8.quantizable_modules(q)
    modeling_int8.swap_modules(q, names, convert=True)
    q.config.int8_modules = names
    arch = q.config.model_type.capitalize()
    carry_code(q, modeling_int8, {"AutoModel": f"Int8{arch}Model",
                                  "AutoModelForPreTraining": f"Int8{arch}ForPreTraining"}, out)  # fmt: skip
    q.save_pretrained(out)
    return {"weight_bytes": weight_bytes(out), "int8_modules": len(names), "scheme": "int8, symmetric, per row"}
