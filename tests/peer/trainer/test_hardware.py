"""The step fitted to the machine (peer.trainer.hardware): device and precision defaults, and the start-up line."""

from __future__ import annotations

import pytest
import torch

from peer.errors import UserError
from peer.trainer.hardware import Precision, StartupFacts, resolve_device, resolve_precision, startup_line


def test_auto_device_is_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_a_device_this_machine_lacks_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA device"):
        resolve_device("cuda:0")
    with pytest.raises(UserError, match="not a torch device"):
        resolve_device("gpu0")


def test_auto_precision_is_bf16_on_a_bf16_card_fp16_with_scaling_on_an_older_one_fp32_elsewhere(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", cuda) == Precision(torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", cuda) == Precision(torch.float16, scaled=True)
    assert resolve_precision("auto", torch.device("cpu")) == Precision()
    assert resolve_precision("auto", torch.device("mps")) == Precision()
    assert resolve_precision("bf16", torch.device("cpu")) == Precision(torch.bfloat16), "bf16 on CPU when asked"
    assert resolve_precision("fp16", torch.device("cpu")).scaled
    with pytest.raises(UserError, match="precision 'int8'"):
        resolve_precision("int8", torch.device("cpu"))


def test_the_startup_line_names_model_size_device_dtype_batch_threads_and_averaging():
    line = startup_line(StartupFacts("electra 256x4", 12_345_678, torch.device("cpu"), Precision(), 16, 4, "diloco"))
    assert line.startswith("training electra 256x4 (12.3M parameters) on cpu (")
    assert f"{torch.get_num_threads()} threads" in line
    assert "GiB" in line and "fp32" in line and "micro-batch 16 x 4 accumulated" in line
    assert line.endswith("averaging diloco")
