"""The training step fitted to the volunteer's machine: which device, which precision, and one line that says so.

Why defaults are chosen here and not in the run config: a run is trained by many different machines, and what one
of them can do (a CUDA card with or without bf16, an Apple GPU, a CPU) is that peer's own business
(``peer.config.PeerSettings``' docstring). ``auto`` picks the fastest sound choice for this machine:

- device: CUDA > Apple MPS > CPU;
- precision: bf16 autocast on a CUDA card that supports it; fp16 autocast with loss scaling (``torch.amp.GradScaler``)
  on older CUDA cards, whose fp16 range overflows without it; fp32 on MPS and CPU (bf16 on CPU only when asked:
  it is slower than fp32 on most CPUs and only saves memory).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from peer.errors import UserError

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Precision:
    """The autocast dtype of the forward pass (None: plain fp32) and whether the loss is scaled (fp16 only)."""

    dtype: torch.dtype | None = None
    scaled: bool = False

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def resolve_device(device: str) -> torch.device:
    """``auto`` = CUDA, else Apple's MPS, else CPU; an explicit device must exist."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise UserError(f"device {device!r} is not a torch device (auto, cpu, cuda, cuda:N or mps)") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but no CUDA device is available")
    if chosen.type == "mps" and not mps_available():
        raise UserError(f"device {device!r} asked for, but this machine has no usable Apple MPS device")
    return chosen


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """The precision ``precision`` means on ``device`` (``auto``: see the module's docstring). fp16 always comes with
    loss scaling; asking for it on CPU is allowed (GradScaler works there) but only useful for tests."""
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type != "cuda":
            return Precision()
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16)
        return Precision(torch.float16, scaled=True)
    if precision == "bf16":
        return Precision(torch.bfloat16)
    if precision == "fp16":
        return Precision(torch.float16, scaled=True)
    return Precision()


def device_summary(device: torch.device) -> str:
    """The device's name and memory, e.g. ``cuda (NVIDIA H100, 79.1 GiB)`` or ``cpu (31.2 GiB)``."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{device} ({props.name}, {props.total_memory / 2**30:.1f} GiB)"
    if device.type == "mps":
        return "mps (Apple GPU, unified memory)"
    try:
        return f"cpu ({os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB)"
    except (ValueError, OSError, AttributeError):  # not every OS names these
        return "cpu"


@dataclass(frozen=True)
class StartupFacts:
    """What the start-up line reports: the model, how this machine trains it, and how the peer averages."""

    model: str
    parameters: int
    device: torch.device
    precision: Precision
    micro_batch: int
    grad_accum: int
    averaging: str


def startup_line(facts: StartupFacts) -> str:
    """One line an operator reads to know what this peer will do on this machine, e.g. ``training electra
    (33.4M parameters) on cuda (NVIDIA H100, 79.1 GiB), bf16, micro-batch 32 x 4 accumulated, 16 threads,
    averaging sync``."""
    return (
        f"training {facts.model} ({facts.parameters / 1e6:.1f}M parameters) on {device_summary(facts.device)}, "
        f"{facts.precision.name}{' with loss scaling' if facts.precision.scaled else ''}, "
        f"micro-batch {facts.micro_batch} x {facts.grad_accum} accumulated, {torch.get_num_threads()} threads, "
        f"averaging {facts.averaging}"
    )
