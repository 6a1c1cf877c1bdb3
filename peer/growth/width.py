"""Width growth by index maps: every target unit copies one source unit, and a layer reading duplicated inputs
divides by the number of copies, so its output is unchanged.

One rule covers HyperCloning and Net2Net/bert2BERT: for a linear with target output units mapped by ``out_idx`` and
inputs by ``in_idx``, ``W_t = W[out_idx][:, in_idx] / count(in_idx)`` and ``b_t = b[out_idx]``. With even duplication
by k this is exactly ``W.repeat(k, k) / k`` (both sides), ``repeat(1, k) / k`` (input side), ``repeat(k, 1)`` (output
side). Embedding tables and LayerNorm gamma/beta are indexed without division (the mean and variance of [x; x] equal
those of x, so post-LN stays exact). Where a LayerNorm sits (residual stream, embedding), only even duplication is
exact; inside attention and the FFN any duplication is exact because the next layer divides by the per-unit count.

Attention keeps whole heads: a target head copies one source head, and within a head, dims map ``m -> m % d_src``.
If the head size grows, the q·k product sums each source dim ``c`` times, so q is divided by ``c`` and multiplied by
``sqrt(d_tgt / d_src)`` to undo the larger softmax temperature (for even k: q scaled by ``sqrt(d_src / d_tgt)``).

All arithmetic is fp64 (the source is loaded as fp64); the caller casts once at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from peer.errors import UserError
from peer.growth.layout import BLOCK, DISC_HEAD, EMBEDDING_TABLES, PROJECTION, Dims, layer_key


def duplicate_index(n_src: int, n_tgt: int, what: str, *, even: bool, rng: torch.Generator | None) -> torch.Tensor:
    """Target→source unit map for widening ``n_src`` to ``n_tgt``. Even duplication (``i % n_src``) when ``n_tgt`` is a
    multiple; otherwise Net2Net's: the first ``n_src`` units in place, the rest copies of evenly spaced units
    (refused when ``even`` is required, i.e. where a LayerNorm would make it inexact). ``rng`` is unused (kept so
    callers need not change)."""
    if n_tgt < n_src:
        raise UserError(f"target {what} {n_tgt} is narrower than the source's {n_src}")
    if n_tgt % n_src == 0:
        return torch.arange(n_tgt) % n_src
    if even:
        raise UserError(
            f"exact growth needs the target {what} to be an integer multiple of the source's "
            f"({n_tgt} / {n_src} = {n_tgt / n_src:.3g}); use --width-method fpi for an approximate growth"
        )
    # Replicas evenly spaced over the source units, not random (Net2Net's choice): a random pick can duplicate one of
    # BERT's few outlier dims, which shifts the residual LayerNorm's statistics. MiniLM 384 -> 512 FPI, fp64, probe
    # batch: final hidden rel. L2 0.58 with random replicas (0.72 already after the embedding LN), 0.29 evenly spaced.
    extra = n_tgt - n_src
    return torch.cat([torch.arange(n_src), torch.arange(extra) * n_src // extra])


def select_index(n_src: int, n_tgt: int) -> torch.Tensor:
    """Cyclic map that may also narrow (the first ``n_tgt`` units): used for the ELECTRA generator's narrowed copy."""
    return torch.arange(n_tgt) % n_src


@dataclass
class WidthMaps:
    """Index maps of every space of a model: residual ``hidden``, ``embedding`` (E), ``ffn``, and attention
    (``heads`` whole heads, ``head_dims`` within a head)."""

    hidden: torch.Tensor
    embedding: torch.Tensor
    ffn: torch.Tensor
    heads: torch.Tensor
    head_dims: torch.Tensor
    src: Dims
    tgt: Dims

    @property
    def attention(self) -> torch.Tensor:
        """Flat map of the attention space (heads × head_dim, HF's layout)."""
        return (self.heads[:, None] * self.src.head_dim + self.head_dims[None, :]).reshape(-1)

    def q_scale(self) -> torch.Tensor:
        """Per target attention unit factor for q (see the module docstring)."""
        counts = torch.bincount(self.head_dims, minlength=self.src.head_dim).to(torch.float64)
        per_dim = math.sqrt(self.tgt.head_dim / self.src.head_dim) / counts[self.head_dims]
        return per_dim.repeat(self.tgt.heads)


def width_maps(src: Dims, tgt: Dims, *, exact: bool, rng: torch.Generator) -> WidthMaps:
    """Maps for growing ``src`` to ``tgt``. ``exact`` requires even duplication where a LayerNorm sits (residual
    stream and embedding); ``exact=False`` is bert2BERT's FPI there (approximate under post-LN)."""
    return WidthMaps(
        hidden=duplicate_index(src.hidden, tgt.hidden, "hidden size", even=exact, rng=rng),
        embedding=duplicate_index(src.embedding, tgt.embedding, "embedding size", even=exact, rng=rng),
        ffn=duplicate_index(src.ffn, tgt.ffn, "FFN size", even=False, rng=rng),
        heads=duplicate_index(src.heads, tgt.heads, "number of heads", even=False, rng=rng),
        head_dims=duplicate_index(src.head_dim, tgt.head_dim, "head size", even=False, rng=rng),
        src=src,
        tgt=tgt,
    )


@dataclass
class GrownState:
    """A grown state dict plus, for each weight that reads duplicated inputs, its input map (what the symmetry-breaking
    noise needs to cancel exactly)."""

    state: dict[str, torch.Tensor]
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)


def expand_linear(out: GrownState, name: str, w: torch.Tensor, b: torch.Tensor | None, out_idx, in_idx) -> None:
    counts = torch.bincount(in_idx, minlength=w.shape[1]).to(w.dtype)
    out.state[f"{name}.weight"] = w[out_idx][:, in_idx] / counts[in_idx]
    out.inputs[f"{name}.weight"] = in_idx
    if b is not None:
        out.state[f"{name}.bias"] = b[out_idx]


def expand_norm(out: GrownState, name: str, state: dict, idx: torch.Tensor, scale: torch.Tensor | None = None) -> None:
    gamma, beta = state[f"{name}.weight"][idx], state[f"{name}.bias"][idx]
    if scale is not None:
        gamma, beta = gamma * scale, beta * scale
    out.state[f"{name}.weight"], out.state[f"{name}.bias"] = gamma, beta


def grow_block(state: dict, out: GrownState, src_layer: int, tgt_layer: int, maps: WidthMaps) -> None:
    """One encoder block of the source (``src_layer``) grown into ``tgt_layer`` of the target."""
    s = lambda role, p: state.get(layer_key(src_layer, role, p))  # noqa: E731 - local shorthand
    t = lambda role: f"encoder.layer.{tgt_layer}.{BLOCK[role]}"  # noqa: E731
    attn, h = maps.attention, maps.hidden
    qs = maps.q_scale()
    expand_linear(out, t("q"), s("q", "weight"), s("q", "bias"), attn, h)
    out.state[f"{t('q')}.weight"] = out.state[f"{t('q')}.weight"] * qs[:, None]
    out.state[f"{t('q')}.bias"] = out.state[f"{t('q')}.bias"] * qs
    expand_linear(out, t("k"), s("k", "weight"), s("k", "bias"), attn, h)
    expand_linear(out, t("v"), s("v", "weight"), s("v", "bias"), attn, h)
    expand_linear(out, t("o"), s("o", "weight"), s("o", "bias"), h, attn)
    expand_linear(out, t("ffn_in"), s("ffn_in", "weight"), s("ffn_in", "bias"), maps.ffn, h)
    expand_linear(out, t("ffn_out"), s("ffn_out", "weight"), s("ffn_out", "bias"), h, maps.ffn)
    for role in ("ln_attn", "ln_ffn"):
        src_name = f"encoder.layer.{src_layer}.{BLOCK[role]}"
        out.state[f"{t(role)}.weight"] = state[f"{src_name}.weight"][h]
        out.state[f"{t(role)}.bias"] = state[f"{src_name}.bias"][h]


def source_projection(state: dict, src: Dims) -> tuple[torch.Tensor, torch.Tensor]:
    """The source's E→hidden projection; a BERT-style source (E == hidden, no projection weights) has the identity,
    so growing it gives the ``[I; …; I]`` (scaled on the input side) projection with b = 0. An ALBERT source always
    has one (even with E == hidden), so the weights decide, not the sizes."""
    if f"{PROJECTION}.weight" in state:
        return state[f"{PROJECTION}.weight"], state[f"{PROJECTION}.bias"]
    eye = torch.eye(src.hidden, dtype=torch.float64)
    return eye, torch.zeros(src.hidden, dtype=torch.float64)


def grow_embeddings(
    state: dict, out: GrownState, maps: WidthMaps, max_positions: int, projection: bool | None = None
) -> None:
    """Embedding tables repeated along E with no 1/k (they feed a LayerNorm, which is scale-sensitive), the
    embedding LayerNorm repeated, and the projection expanded when the target has one (``projection``: default
    ELECTRA's rule, E != hidden; ALBERT always has one).

    Positions: the target keeps the source's first ``max_positions`` rows (the target's
    ``max_position_embeddings``), so the function is unchanged on every sequence the target accepts. A target with
    more positions than the source is refused rather than given fresh rows: a position the source never saw has no
    trained embedding, and random rows would silently break function preservation on exactly the long sequences a
    user asked for; growing the position table is a training decision, not a growth one."""
    e = maps.embedding
    for table in EMBEDDING_TABLES:
        w = state[f"embeddings.{table}.weight"]
        if table == "position_embeddings":
            if max_positions > w.shape[0]:
                raise UserError(
                    f"target max_position_embeddings {max_positions} exceeds the source's {w.shape[0]} "
                    "(positions beyond the source's have no trained embedding; lower --target positions=)"
                )
            w = w[:max_positions]
        out.state[f"embeddings.{table}.weight"] = w[:, e]
    expand_norm(out, "embeddings.LayerNorm", state, e)
    if maps.tgt.has_projection if projection is None else projection:
        w, b = source_projection(state, maps.src)
        expand_linear(out, PROJECTION, w, b, maps.hidden, e)
    elif f"{PROJECTION}.weight" in state:
        raise UserError("the source has a factorised embedding; set the target's embedding_size to keep it")


def grow_disc_head(head: dict[str, torch.Tensor], out: GrownState, maps: WidthMaps) -> None:
    """The ELECTRA discriminator head (dense hidden→hidden, then a 1-unit prediction reading hidden ``/k``)."""
    h = maps.hidden
    expand_linear(out, f"{DISC_HEAD}.dense", head[f"{DISC_HEAD}.dense.weight"], head[f"{DISC_HEAD}.dense.bias"], h, h)
    w, b = head[f"{DISC_HEAD}.dense_prediction.weight"], head[f"{DISC_HEAD}.dense_prediction.bias"]
    expand_linear(out, f"{DISC_HEAD}.dense_prediction", w, b, torch.arange(w.shape[0]), h)
