"""Optimizers for pretraining: AdamW (fused on CUDA) and LAMB, both with weight decay kept off LayerNorm and biases.

The no-decay rule is by shape, not by name: every 1-D parameter (LayerNorm weights and biases, all biases) gets no
weight decay, which is exactly google-research's name-based exclusion for BERT/ELECTRA/ALBERT and survives
hivemind's copying of parameters (copies have no names).

With ``hivemind.Optimizer``: pass ``params=param_groups(models.parameters(), spec.weight_decay)`` and
``optimizer=partial(make_optimizer, spec=spec)``, ``scheduler=partial(make_scheduler, spec=spec)``. hivemind hands
the factory its groups (possibly with offloaded copies) and asserts that the optimizer keeps their number and
parameter order, so ``make_optimizer`` passes param-group dicts through unchanged and only splits a flat list.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from peer.config import TrainSpec
from peer.errors import UserError

BETAS = (0.9, 0.999)


def param_groups(params: Iterable, weight_decay: float) -> list[dict]:
    """Splits ``params`` into a decayed group (matrices) and an undecayed one (vectors). Param-group dicts pass
    through unchanged (they already say what they want)."""
    params = list(params)
    if params and isinstance(params[0], dict):
        return params
    decay = [p for p in params if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in params if p.requires_grad and p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0, "layer_adaptation": False},
    ]
    return [g for g in groups if g["params"]]


def make_optimizer(params: Iterable, spec: TrainSpec) -> torch.optim.Optimizer:
    """The optimizer named by ``spec.optimizer`` with ``spec``'s lr, eps and weight decay."""
    groups = param_groups(params, spec.weight_decay)
    if not groups:
        raise UserError("no trainable parameters")
    if spec.optimizer == "adamw":
        on_cuda = all(p.is_cuda for g in groups for p in g["params"])
        return torch.optim.AdamW(
            groups, lr=spec.lr, betas=BETAS, eps=spec.adam_eps, weight_decay=spec.weight_decay, fused=on_cuda or None
        )
    if spec.optimizer == "lamb":
        return Lamb(groups, lr=spec.lr, betas=BETAS, eps=spec.adam_eps, weight_decay=spec.weight_decay)
    raise UserError(f"unknown optimizer {spec.optimizer!r} (known: adamw, lamb)")


def named_optimizer_state(
    optimizer: torch.optim.Optimizer, named: Iterable[tuple[str, torch.nn.Parameter]]
) -> dict[str, dict[str, torch.Tensor]]:
    """The optimizer's per-parameter state by parameter name (tensors as they are, not copied)."""
    return {name: dict(optimizer.state[p]) for name, p in named if optimizer.state.get(p)}


def load_named_optimizer_state(
    optimizer: torch.optim.Optimizer,
    named: Iterable[tuple[str, torch.nn.Parameter]],
    states: dict[str, dict[str, torch.Tensor]],
) -> None:
    """Puts ``states`` (by parameter name) into ``optimizer``: moments in each parameter's dtype and device,
    ``step`` as a float32 scalar where torch's AdamW keeps it (on the parameter's device only for fused/capturable
    optimizers, which is where their ``step`` lives)."""
    named = dict(named)
    unknown = sorted(set(states) - set(named))
    if unknown:
        raise ValueError(f"optimizer state for {unknown[0]!r}, which the optimizer's parameters do not have")
    for name, state in states.items():
        p = named[name]
        group = next(g for g in optimizer.param_groups if any(q is p for q in g["params"]))
        on_device = bool(group.get("fused") or group.get("capturable"))
        loaded = {}
        for key, value in state.items():
            if key == "step":
                loaded[key] = torch.tensor(float(value), dtype=torch.float32, device=p.device if on_device else "cpu")
            else:
                loaded[key] = value.to(dtype=p.dtype, device=p.device).clone()
        optimizer.state[p] = loaded


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al., 2019, "Large Batch Optimization for Deep Learning"), as ALBERT and hivemind's albert
    example train with: an Adam direction (bias-corrected) plus decoupled weight decay, scaled per tensor by the
    trust ratio ||w|| / ||update|| (1 where either norm is 0). Groups with ``layer_adaptation=False`` (LayerNorm
    and biases in google-research/albert) skip the trust ratio and take the plain Adam step."""

    def __init__(self, params, lr=1e-3, betas=BETAS, eps=1e-6, weight_decay=0.0, layer_adaptation=True):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError("invalid LAMB hyper-parameters")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, layer_adaptation=layer_adaptation)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.float()
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                t = state["step"].item()
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt_().add_(group["eps"]))
                if group["weight_decay"]:
                    update.add_(p.float(), alpha=group["weight_decay"])
                ratio = 1.0
                if group["layer_adaptation"]:
                    w_norm, u_norm = p.float().norm(), update.norm()
                    ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.add_((update * ratio).to(p.dtype), alpha=-group["lr"])
        return loss
