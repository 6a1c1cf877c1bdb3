"""The run's model stages (``model_stages``): the model at step 0 and after each ``growth.schedule`` entry, checked
for what mid-run growth can carry out.
"""

from __future__ import annotations

import dataclasses

from peer.config.specs import ConfigError, ModelSpec, RunConfig


def model_stages(cfg: RunConfig) -> list[tuple[int, ModelSpec]]:
    """``(at_step, model)`` of every stage of the run: ``(0, cfg.model)`` and one per ``growth.schedule`` entry.

    ConfigError in one line for a schedule that mid-run growth cannot carry out: steps not increasing, an entry that
    changes nothing, a size that shrinks, and widths that are not integer multiples of the previous stage's (hidden,
    FFN, heads, head size, and the ELECTRA generator's, which follow from them). Why integer multiples whatever
    ``width_method`` says: mid-run growth duplicates every unit the same number of times, which is what keeps the
    grown function and the grown Adam moments exact (``peer.growth.midrun``); ``width_method`` is the initial growth
    from ``source``. Depth may grow by any number of layers (stacked, not function-preserving)."""
    stages = [(0, cfg.model)]
    if not cfg.growth.switch_grace >= 0:
        raise ConfigError(f"growth.switch_grace must be >= 0 s, not {cfg.growth.switch_grace}")
    if cfg.growth.schedule and cfg.model.architecture != "electra":
        raise ConfigError(
            f"growth.schedule: mid-run growth supports model.architecture electra only, not {cfg.model.architecture}"
        )
    for i, entry in enumerate(cfg.growth.schedule):
        where = f"growth.schedule[{i}]"
        prev_step, prev = stages[-1]
        if entry.at_step <= prev_step:
            raise ConfigError(f"{where}.at_step {entry.at_step} must be greater than the previous stage's {prev_step}")
        changes = {k: v for k, v in dataclasses.asdict(entry.model).items() if v is not None}
        spec = dataclasses.replace(prev, **changes)
        if spec == prev:
            raise ConfigError(f"{where}.model changes no size of the previous stage")
        for key, value in changes.items():
            if value < getattr(prev, key):
                raise ConfigError(
                    f"{where}.model.{key} {value} is smaller than the previous stage's "
                    f"{getattr(prev, key)} (growth cannot shrink a model)"
                )
        if spec.hidden_size % spec.num_heads:
            raise ConfigError(
                f"{where}.model: hidden_size {spec.hidden_size} is not divisible by num_heads {spec.num_heads}"
            )
        for what, old, new in _widths(prev, spec):
            if new % old:
                raise ConfigError(
                    f"{where}.model: {what} {new} is not an integer multiple of the previous stage's "
                    f"{old} (mid-run growth duplicates units exactly)"
                )
        stages.append((entry.at_step, spec))
    return stages


def _widths(old: ModelSpec, new: ModelSpec) -> list[tuple[str, int, int]]:
    """(name, old, new) of every width that mid-run growth duplicates, the ELECTRA generator's included (its sizes
    are ``generator_fraction`` of the discriminator's; the same rule as ``peer.modeling.generator_sizes``)."""

    def sizes(spec: ModelSpec) -> dict[str, int]:
        head = spec.hidden_size // spec.num_heads
        g_heads = max(1, round(spec.num_heads * spec.generator_fraction))
        return {
            "hidden_size": spec.hidden_size,
            "ffn_size": spec.ffn_size,
            "num_heads": spec.num_heads,
            "head size (hidden_size / num_heads)": head,
            "generator hidden size": g_heads * head,
            "generator heads": g_heads,
            "generator FFN size": max(1, round(spec.ffn_size * spec.generator_fraction)),
        }

    before, after = sizes(old), sizes(new)
    return [(name, before[name], after[name]) for name in before]
