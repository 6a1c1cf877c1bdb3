"""The swarm's resumable state, keyed by parameter name, and its two encodings.

What a run needs to continue exactly where it was: the parameters, the optimizer's per-parameter state (Adam/LAMB
``step``, ``exp_avg``, ``exp_avg_sq``), DiLoCo's outer momentum and the global step (the lr schedule follows the
step). It travels in two forms:

* hivemind's state download (``TrainingStateAverager.get_current_state``): metadata ``{"epoch", "group_bits",
  "optimizer_metadata"}`` and one flat tensor list ``[parameters in the optimizer's group order] + [extra tensors
  (our outer momentum)] + [optimizer tensors]``, where ``optimizer_metadata`` flattens ``optimizer.state_dict()``
  with sorted keys and names tensors by their index in the third part;
* a checkpoint: the HF model dir holds the parameters; ``optimizer.safetensors`` holds
  ``optimizer/<param name>/<key>`` and ``outer_momentum/<param name>``; ``training_state.json`` holds the step.

Keying by parameter name (not by position) is what lets a checkpoint outlive the order in which one peer's optimizer
happened to list its parameters. Hyper-parameters (lr, betas, weight decay) are not part of the state: they come from
the run config, and the lr schedule is recomputed from the step.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hivemind.utils.nested import nested_flatten, nested_pack
from safetensors.torch import load_file, save_file

from peer.errors import UserError
from peer.run.checkpoint_layout import TRAINING_STATE_FILE

logger = logging.getLogger(__name__)

OPTIMIZER_FILE = "optimizer.safetensors"
_OPTIMIZER_PREFIX = "optimizer/"
_MOMENTUM_PREFIX = "outer_momentum/"
# a served state's metadata key: the last outer round averaged into it (DiLoCo; -1: none, or sync mode), whose anchor
# the donor serves as its parameters; recorded in a checkpoint too, so a joiner can tell whether the coordinator's
# checkpoint holds the same state as its donors (``peer.swarm.checkpoint_source``)
LANDED_ROUND = "warmswarm_landed_round"


@dataclass
class SwarmState:
    """The swarm's state at global step ``step``. ``optimizer`` maps a parameter name to its optimizer state
    (tensors only); it is empty when the source had none (a checkpoint written before optimizer state was saved,
    or a grown step-0 model). ``outer_momentum`` is empty outside DiLoCo."""

    step: int
    parameters: dict[str, torch.Tensor]
    optimizer: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    outer_momentum: dict[str, torch.Tensor] = field(default_factory=dict)
    landed_round: int = -1  # the donor's last averaged outer round (``LANDED_ROUND``); -1 when none or unknown


def decode_optimizer_state(
    metadata: list[dict], tensors: Sequence[torch.Tensor], structure: dict, names: Sequence[str]
) -> dict[str, dict[str, torch.Tensor]]:
    """hivemind's ``optimizer_metadata`` + optimizer tensors -> per-parameter state keyed by ``names`` (the
    parameters in wire order). ``structure`` is a ``state_dict()`` of the same optimizer recipe; a layout that does
    not fit it is a UserError, not a silently shifted state."""
    flat: list[Any] = []
    for item in metadata:
        if item.get("type") == "tensor" and isinstance(item.get("index"), int) and item["index"] < len(tensors):
            flat.append(tensors[item["index"]])
        elif item.get("type") == "value" and "value" in item:
            flat.append(item["value"])
        else:
            raise UserError(f"the swarm's optimizer state has a malformed entry {item!r}")
    expected = sum(1 for _ in nested_flatten(structure))
    if len(flat) != expected:
        raise UserError(
            f"the swarm's optimizer state has {len(flat)} entries, this run's optimizer {expected}: "
            "the peers use another optimizer or schedule than this config"
        )
    packed = nested_pack(flat, structure)
    state = packed["state"]
    if len(state) != len(names):
        raise UserError(f"the swarm's optimizer holds state for {len(state)} parameters, expected {len(names)}")
    decoded = {}
    for position, name in enumerate(names):
        entry = state.get(position, state.get(str(position)))
        if not isinstance(entry, dict) or not all(isinstance(v, torch.Tensor) for v in entry.values()):
            raise UserError(f"the swarm's optimizer state for {name} is not a dict of tensors")
        decoded[name] = dict(entry)
    return decoded


def check_shapes(state: SwarmState, shapes: dict[str, torch.Size]) -> None:
    """Every parameter, moment and momentum buffer has its parameter's shape (scalars such as ``step`` excepted)."""
    for name, shape in shapes.items():
        if name not in state.parameters:
            raise UserError(f"the state has no parameter {name}: this config's model does not match it")
        if state.parameters[name].shape != shape:
            raise UserError(
                f"{name} has shape {tuple(state.parameters[name].shape)} in the state, {tuple(shape)} in this model: "
                "this config's model does not match it"
            )
        tensors = list(state.optimizer.get(name, {}).values())
        tensors += [state.outer_momentum[name]] if name in state.outer_momentum else []
        for tensor in tensors:
            if tensor.ndim > 0 and tensor.shape != shape:
                raise UserError(f"optimizer state of {name} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
    if state.optimizer and set(state.optimizer) != set(shapes):
        raise UserError("the optimizer state does not cover exactly this model's parameters")


def write_optimizer_file(state: SwarmState, out_dir: Path) -> None:
    """Writes ``optimizer.safetensors`` (nothing when there is no optimizer state nor momentum to keep)."""
    tensors = {}
    for name, entry in state.optimizer.items():
        for key, tensor in entry.items():
            tensors[f"{_OPTIMIZER_PREFIX}{name}/{key}"] = tensor.detach().to("cpu").contiguous()
    for name, tensor in state.outer_momentum.items():
        tensors[f"{_MOMENTUM_PREFIX}{name}"] = tensor.detach().to("cpu").contiguous()
    if tensors:
        save_file(tensors, str(out_dir / OPTIMIZER_FILE), metadata={"format": "pt", "step": str(state.step)})


def checkpoint_training_state(state: SwarmState) -> dict:
    """The resume fields of ``training_state.json`` (the coordinator adds samples and run_id)."""
    keys = sorted({key for entry in state.optimizer.values() for key in entry})
    return {
        "step": state.step,
        "scheduler_step": state.step,  # hivemind's scheduler takes one step per global step
        "optimizer_state": keys,  # which per-parameter tensors optimizer.safetensors holds; [] = none
        "outer_momentum": bool(state.outer_momentum),
        "landed_round": state.landed_round,  # with the step, which state the checkpoint holds (DiLoCo's anchor)
    }


def read_checkpoint_step(checkpoint_dir: Path) -> int:
    path = checkpoint_dir / TRAINING_STATE_FILE
    try:
        return int(json.loads(path.read_text())["step"]) if path.is_file() else 0
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"unreadable {path}: {e}") from None


def read_checkpoint_stage(checkpoint_dir: Path) -> int:
    """The growth stage of the model a checkpoint holds (``training_state.json``'s "stage"; 0 when it has none: a
    checkpoint from before stages, or a model dir that is not a checkpoint). A peer that starts from it trains in
    that stage, under its keys: growing it again at the stage's step would give a model of the wrong sizes."""
    path = checkpoint_dir / TRAINING_STATE_FILE
    try:
        stage = int(json.loads(path.read_text()).get("stage", 0)) if path.is_file() else 0
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise UserError(f"unreadable {path}: {e}") from None
    if stage < 0:
        raise UserError(f"{path}: stage {stage} is negative")
    return stage


def read_checkpoint_state(checkpoint_dir: Path, named_parameters: Sequence[tuple[str, torch.Tensor]]) -> SwarmState:
    """The state of a checkpoint whose model was loaded into ``named_parameters`` (the tensors are referenced, not
    copied). Without ``optimizer.safetensors`` the optimizer part is empty: the peer starts with fresh moments."""
    state = SwarmState(step=read_checkpoint_step(checkpoint_dir), parameters=dict(named_parameters))
    path = checkpoint_dir / OPTIMIZER_FILE
    if not path.is_file():
        return state
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise UserError(f"unreadable {path}: {e}") from None
    for key, tensor in tensors.items():
        if key.startswith(_OPTIMIZER_PREFIX):
            name, _, slot = key[len(_OPTIMIZER_PREFIX) :].rpartition("/")
            state.optimizer.setdefault(name, {})[slot] = tensor
        elif key.startswith(_MOMENTUM_PREFIX):
            state.outer_momentum[key[len(_MOMENTUM_PREFIX) :]] = tensor
    check_shapes(state, {name: p.shape for name, p in named_parameters})
    return state


def decode_wire_state(
    metadata: dict, tensors: Sequence[torch.Tensor], names: Sequence[str], structure: dict, num_extras: int
) -> SwarmState:
    """A state download (see the module docstring) -> SwarmState. ``names`` are the parameters in wire order,
    ``num_extras`` the number of extra tensors the peers send (one outer-momentum buffer per parameter in DiLoCo)."""
    n = len(names)
    if not isinstance(metadata, dict) or not isinstance(metadata.get("epoch"), int):
        raise UserError("the swarm's state came without a global step (epoch)")
    if len(tensors) < n + num_extras:
        raise UserError(f"the swarm's state has {len(tensors)} tensors, expected at least {n + num_extras}")
    extras = tensors[n : n + num_extras]
    optimizer = decode_optimizer_state(
        metadata.get("optimizer_metadata") or [], tensors[n + num_extras :], structure, names
    )
    return SwarmState(
        step=metadata["epoch"],
        parameters=dict(zip(names, tensors[:n], strict=True)),
        optimizer=optimizer,
        outer_momentum=dict(zip(names, extras, strict=True)) if num_extras == n else {},
        landed_round=landed if isinstance(landed := metadata.get(LANDED_ROUND), int) else -1,
    )


def wire_names(opt, named_parameters: Sequence[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of a peer's parameters in its state averager's (wire) order."""
    name_of = {id(p): name for name, p in named_parameters}
    try:
        return [name_of[id(p)] for p in opt.opt.state_averager.main_parameters]
    except KeyError:
        raise UserError("the swarm optimizer holds a parameter the model does not name") from None


@torch.no_grad()
def apply_swarm_state(opt, names: Sequence[str], state: SwarmState) -> None:
    """Loads ``state`` into a peer's ``SwarmOptimizer`` (``names`` in wire order) the way hivemind's own
    ``load_state_from_peers`` does: parameters into the optimizer's (possibly offloaded) copies and from there into
    the model, the per-parameter optimizer state, the outer momentum, then epoch, lr schedule and state-sharing
    priority. Hyper-parameters stay the peer's own (they come from the run config)."""
    averager = opt.opt.state_averager
    opt_params = [p for group in averager.optimizer.param_groups for p in group["params"]]
    check_shapes(state, dict(zip(names, (p.shape for p in opt_params), strict=True)))
    with averager.lock_averaged_tensors:
        for param, name in zip(opt_params, names, strict=True):
            param.copy_(state.parameters[name].to(param.device, param.dtype))
        if state.optimizer:
            state_dict = averager.optimizer.state_dict()
            state_dict["state"] = {i: state.optimizer[name] for i, name in enumerate(names)}
            averager.optimizer.load_state_dict(state_dict)
        extras = list(averager.extra_tensors)
        if state.outer_momentum and len(extras) == len(names):
            for buffer, name in zip(extras, names, strict=True):
                buffer.copy_(state.outer_momentum[name].to(buffer.device, buffer.dtype))
    if averager.offload_optimizer:
        averager._apply_optimizer_parameters_()
    if not averager.reuse_tensors:
        averager._load_local_tensors_into_averager_()
    opt.start_at(state.step)
    if opt.outer is not None:
        opt.outer.reset_anchor()
    if not opt.opt.client_mode:
        averager.state_sharing_priority = state.step
