"""Growing Adam's state with the parameters, so that the first update after growth continues the small model's.

Why not restart the optimizer: Adam's first step from zero moments is ``lr * sign(g)`` on every coordinate, a jump
unrelated to the step the run was taking, and the bias correction starts over; the loss continuity that exact growth
buys at step 0 is then lost at step 1.

The mapping, for exact width growth. Each grown element is ``θ_t[i] = α_i θ_s[a]`` of one source element
``a = π(i)`` (``α`` = 1 for copies, 1/c for a weight split over c copies of its input, and the q scaling); every source
element has ``n_a`` such copies. The grown function restricted to these points equals the small one, and copies are
symmetric, so their gradients are equal and sum to the small gradient through ``α``: ``g_t[i] = g_s[a] / (n_a α_a)``
(for a split weight ``n α = c_out``: split over its inputs, shared over its output copies). In matrix terms, with
``A`` the linear growth map, ``g_t = A (AᵀA)⁻¹ g_s``, and ``AᵀA`` is diagonal with ``Σ α²`` over each element's
copies. So:

- first moment ``m`` (an average of gradients) maps like the gradient: ``m_t = A(m_s / Σα²)``;
- second moment ``v`` (an average of squared gradients) like the gradient squared: ``v_t = A(√v_s / Σα²)²``;
- ``step`` is kept, per tensor: the moments are the same averages, so their bias correction goes on.

``A`` is the parameters' own growth function (``grow_pair_width``), applied to the moments, and ``Aᵀ`` its autograd
transpose: the state cannot be mapped differently from the parameters it belongs to.

What it implies. Adam's step ``m / (√v + ε)`` is invariant to a per-coordinate scale, so every grown coordinate
takes the small model's Adam direction unchanged (up to ε, which acts as ``n α ε``): copies stay identical and the
grown model after one step computes what the small model computes after a step whose learning rate on each tensor is
``lr / α`` (``effective_lr_factors``): ``c_in``× on every matrix that reads duplicated inputs, 1× on embeddings,
LayerNorms and biases. That is standard parametrisation's behaviour: a model trained from scratch at the grown
width with the same lr takes the same per-coordinate steps, and μP would scale the hidden matrices' Adam lr by
``1/c_in`` to keep the function-space step. We keep one lr (the run's schedule goes on unchanged), so the first
updates after a k× growth move the function more than the small model's did; what that costs in loss is measured,
not assumed (``tests/peer/growth/test_midrun_growth.py`` pins the relation exactly).

Depth: a stacked block copies its source block's moments (and ``step``) with its parameters; it is no copy of a
function, so nothing stronger holds there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

State = dict[str, torch.Tensor]
Map = Callable[[State], State]
GRADIENT_LIKE = ("exp_avg",)
SQUARE_LIKE = ("exp_avg_sq", "max_exp_avg_sq")


def _transpose_diagonal(width: Map, like: State) -> State:
    """``Σ α²`` over each source element's copies, as ``Aᵀ(A(1))``; 1 where an element has no copy (unused)."""
    ones = {k: torch.ones_like(v, dtype=torch.float64) for k, v in like.items()}
    with torch.no_grad():
        alpha = width(ones)
    leaves = {k: v.clone().requires_grad_(True) for k, v in ones.items()}
    with torch.enable_grad():
        grown = width(leaves)
        names = sorted(grown)
        grads = torch.autograd.grad(
            [grown[n] for n in names], list(leaves.values()), [alpha[n] for n in names], allow_unused=True
        )
    out = {}
    for name, grad in zip(leaves, grads, strict=True):
        d = torch.zeros_like(ones[name]) if grad is None else grad.detach()
        out[name] = torch.where(d > 0, d, torch.ones_like(d))
    return out


def grow_adam_state(states: dict[str, State], params: State, width: Map, depth: Map) -> dict[str, State]:
    """The Adam/AdamW (or LAMB) state of the grown parameters, per parameter name.

    ``states``: per name, the optimizer's ``{"step", "exp_avg", "exp_avg_sq"}`` (``peer.trainer.optim.
    named_optimizer_state``);
    ``params``: the source parameters (only their names and shapes matter); ``width``: the exact width growth the
    parameters went through (linear, names kept); ``depth``: the block copy after it (names of copied blocks
    added). A parameter without state (never stepped) gets none. The result is fp64 on the CPU, like growth's
    parameters (``peer.trainer.optim.load_named_optimizer_state`` puts it on the parameters' device)."""
    d = _transpose_diagonal(width, params)
    sources = {name: {k: v.detach().to("cpu", torch.float64) for k, v in s.items()} for name, s in states.items()}
    missing = sorted(set(sources) - set(params))
    if missing:
        raise ValueError(f"optimizer state for {missing[0]!r}, which is not a parameter")
    grown_keys: dict[str, State] = {}
    for key in sorted({k for s in sources.values() for k in s} - {"step"}):
        if key in GRADIENT_LIKE:
            scaled = {n: s[key] / d[n] for n, s in sources.items() if key in s}
            grown = width(_complete(scaled, params))
        elif key in SQUARE_LIKE:
            scaled = {n: s[key].clamp(min=0).sqrt() / d[n] for n, s in sources.items() if key in s}
            grown = {n: v.square() for n, v in width(_complete(scaled, params)).items()}
        else:
            raise ValueError(
                f"cannot grow optimizer state {key!r} (known: step, {', '.join(GRADIENT_LIKE + SQUARE_LIKE)})"
            )
        grown_keys[key] = depth({n: v for n, v in grown.items() if n in scaled})
    steps = depth({n: s["step"] for n, s in sources.items() if "step" in s})
    out: dict[str, State] = {}
    for key, tensors in grown_keys.items():
        for name, value in tensors.items():
            out.setdefault(name, {})[key] = value
    for name, step in steps.items():
        out.setdefault(name, {})["step"] = step
    return out


def _complete(partial: State, params: State) -> State:
    """``partial`` with zeros for the parameters it lacks: the growth functions read every tensor of a model."""
    return {n: partial[n] if n in partial else torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}


def effective_lr_factors(width: Map, params: State) -> dict[str, float]:
    """Per parameter, ``1 / α``: the factor by which one Adam step of the grown model (grown state, the same lr)
    moves the function more than the small model's step would (see the module docstring). One number per tensor
    because exact growth duplicates evenly; a tensor with uneven factors is refused."""
    ones = {k: torch.ones_like(v, dtype=torch.float64) for k, v in params.items()}
    with torch.no_grad():
        alpha = width(ones)
    factors = {}
    for name, a in alpha.items():
        lo, hi = float(a.min()), float(a.max())
        if abs(hi - lo) > 1e-12 * abs(hi):
            raise ValueError(f"{name}: growth scales its elements unevenly ({lo:g}..{hi:g})")
        factors[name] = 1.0 / hi
    return factors
