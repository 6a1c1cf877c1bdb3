"""Whether this peer can hold the next growth stage, asked before it grows (issue 24: "a peer whose device cannot
hold the next stage says so in one line and leaves cleanly").

Why before, and why this estimate: a switch builds the next stage's parameters, optimizer state and averager
buffers while the old stage's still exist (the grown state is computed from them, and with ``growth.switch_grace``
the old state averager serves them for minutes more), so the next stage must fit in the memory that is free *now*.
Everything a peer holds (parameters, gradients, Adam's moments, the averagers' shared buffers, activations) grows
with the parameter count, so the next stage's footprint is estimated as this stage's measured footprint scaled by the
ratio of parameter counts. On CUDA the footprint is the peak the caching allocator reached (``max_memory_allocated``)
and the room is ``mem_get_info``'s free bytes; elsewhere it is the proportional set size (PSS) of this process and
its children (the DHT and averager processes: their shared tensors counted once) and the room is the host's
available memory. A peer that would not fit leaves with one line instead of being OOM-killed mid-switch, which would
leave its state half-grown and its shared memory behind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import psutil
import torch

from peer.config import ModelSpec
from peer.errors import UserError
from peer.modeling import PretrainingModels, build_models

logger = logging.getLogger(__name__)

GiB = 2**30


@dataclass(frozen=True)
class Memory:
    """This stage's footprint and the room left, in bytes, on the device that holds the model."""

    footprint: int
    free: int


def measured_memory(device: torch.device) -> Memory:
    """This peer's memory now (see the module docstring for what is counted)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return Memory(footprint=torch.cuda.max_memory_allocated(device), free=free)
    me = psutil.Process()
    footprint = 0
    for proc in [me, *me.children(recursive=True)]:
        try:
            footprint += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):  # a child that just exited, p2pd run as another user
            continue
    return Memory(footprint=footprint, free=psutil.virtual_memory().available)


def parameter_count(spec: ModelSpec, vocab_size: int) -> int:
    """The parameters of ``spec``'s pretraining models, counted on the meta device (no memory is allocated)."""
    with torch.device("meta"):
        models = build_models(spec, vocab_size)
    return sum(p.numel() for p in models.parameters())


def check_next_stage_fits(
    models: PretrainingModels,
    next_spec: ModelSpec,
    stage: int,
    device: torch.device,
    measure: Callable[[torch.device], Memory] = measured_memory,
) -> int:
    """Raises UserError (one line) when the next stage's estimated footprint exceeds the free memory; returns that
    estimate in bytes otherwise."""
    now = sum(p.numel() for p in models.parameters())
    vocab = models.discriminator.get_input_embeddings().num_embeddings
    later = parameter_count(next_spec, vocab)
    memory = measure(device)
    needed = int(memory.footprint * later / max(now, 1))
    if needed > memory.free:
        raise UserError(
            f"this peer cannot hold growth stage {stage} ({later:,} parameters, about {needed / GiB:.1f} GiB on "
            f"{device} by this stage's {memory.footprint / GiB:.1f} GiB for {now:,}; {memory.free / GiB:.1f} GiB "
            "free): leaving the swarm before the switch"
        )
    logger.info(
        "stage %d fits: about %.1f GiB needed of %.1f GiB free on %s", stage, needed / GiB, memory.free / GiB, device
    )
    return needed
