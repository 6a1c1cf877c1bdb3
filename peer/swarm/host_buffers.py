"""Pinned host memory for what crosses between a GPU and sync mode's offloaded optimizer, and the fence that makes
the asynchronous copies safe.

Why: sync mode keeps the optimizer on the CPU (hivemind's ``offload_optimizer``), so every global step the averaged
gradients cross device -> host and the updated parameters host -> device. hivemind issues those copies with
``non_blocking=True``, which does nothing on pageable memory: the driver stages each tensor through a bounce buffer
and the host waits for every one of them. From page-locked memory the copies run as DMA, queued back to back on the
stream, and the host waits at most once.

Two kinds of host buffer, two ways to pin them:

- The offloaded optimizer's parameters (the source of the host -> device copy) are private to the training process:
  they are allocated pinned (``pinned_copy``, torch's caching host allocator), before the optimizer is built on them.
- The averaged gradients (the target of the device -> host copy, and the offloaded optimizer's ``.grad``) live in
  shared memory (``share_memory_()``): the gradient averager's own process all-reduces them in place.
  ``pin_memory()`` would return a private copy the averager never sees, so they are page-locked where they are, with
  ``cudaHostRegister`` (``pin_shared``; torch's checkpoint stager pins shared storages the same way). Only after the
  averager process has been forked: the CUDA driver may exclude registered pages from later forks.

Pinned memory makes ``non_blocking`` real, and with it a race hivemind's code never had: the host may read or write a
buffer while a copy into or out of it is still queued. ``CopyFence`` is the one sync point before such a use.
On CPU and MPS nothing here does anything: there is no device copy to speed up.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable

import torch

logger = logging.getLogger(__name__)

_CUDA_HOST_REGISTER_PORTABLE = 1  # cudaHostRegisterPortable: pinned for every CUDA context of the process


def host_buffers_pinned(device: torch.device | str) -> bool:
    """Whether host buffers that cross to and from ``device`` are pinned: only for a CUDA device (page-locking is a
    CUDA host-memory feature; on CPU there is no copy, and MPS shares memory with the host)."""
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


def pinned_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A page-locked copy of a host tensor with its ``requires_grad`` and (pinned too) its ``.grad``."""
    copy = tensor.detach().pin_memory().requires_grad_(tensor.requires_grad)
    if tensor.grad is not None:
        copy.grad = tensor.grad.detach().pin_memory()
    return copy


def pin_shared(tensors: Iterable[torch.Tensor]) -> int:
    """Page-locks the storage of each shared-memory host tensor in place (``cudaHostRegister``); returns how many
    storages are pinned. A storage that is already pinned is left as it is; one that the driver refuses stays
    pageable, with one WARNING line (the copies are then correct but synchronous). Each registration is undone when
    its tensor is garbage-collected (before the storage is unmapped), not at interpreter exit, when the CUDA context
    may be gone."""
    pinned = refused = 0
    seen: set[int] = set()
    cudart = torch.cuda.cudart()
    for tensor in tensors:
        storage = tensor.untyped_storage()
        ptr, size = storage.data_ptr(), storage.nbytes()
        if ptr in seen or size == 0:
            continue
        seen.add(ptr)
        if tensor.is_pinned():
            pinned += 1
            continue
        error = int(cudart.cudaHostRegister(ptr, size, _CUDA_HOST_REGISTER_PORTABLE))
        if error != 0:
            refused += 1
            continue
        pinned += 1
        weakref.finalize(tensor, cudart.cudaHostUnregister, ptr).atexit = False
    if refused:
        logger.warning(
            "could not page-lock %d of %d shared gradient buffers (cudaHostRegister refused): their copies stay "
            "synchronous", refused, refused + pinned,
        )  # fmt: skip
    return pinned


class CopyFence:
    """The point after which every asynchronous copy issued so far on the current CUDA stream has finished.

    ``mark()`` after issuing copies (an event recorded on the stream: no wait), ``wait()`` before the host reads or
    writes a buffer those copies use. Waits only for what was queued before the last ``mark``; the event is kept,
    so that every thread that waits (the optimizer's executor, the training thread) waits for it, the second at no
    cost. On a non-CUDA device both are no-ops."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.active = host_buffers_pinned(self.device)
        self._event: torch.cuda.Event | None = None

    def mark(self) -> None:
        if self.active:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
            self._event = event

    def wait(self) -> None:
        event = self._event
        if event is not None:
            event.synchronize()
