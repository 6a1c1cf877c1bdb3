"""The run's optimizer recipe, as every peer hands it to hivemind and as the coordinator decodes the peers' state.

Why here and not with the state format (``peer.run.state_format``): the recipe is the trainer's optimizer and
schedule; the state format only needs the layout it produces, and ``peer.run`` sits below ``peer.trainer``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from hivemind.optim.state_averager import initialize_optimizer_state_

from peer.config import RunConfig
from peer.trainer.optim import make_optimizer, param_groups
from peer.trainer.schedule import make_scheduler


def run_optimizer_factories(cfg: RunConfig):
    """The optimizer and scheduler factories every peer hands hivemind. The coordinator decodes the peers' optimizer
    state with the same recipe, so both sides take them from here."""

    def optimizer_factory(params):
        return make_optimizer(params, cfg.train)

    def scheduler_factory(optimizer):
        return make_scheduler(optimizer, cfg.train)

    return optimizer_factory, scheduler_factory


def optimizer_layout(params: Sequence[torch.Tensor], cfg: RunConfig) -> tuple[list[int], dict]:
    """(order, structure) of the run's optimizer over ``params``: ``order`` lists the indices of ``params`` as the
    optimizer's groups list them (the wire order of the state download), ``structure`` is the ``state_dict()`` of
    an initialised optimizer + scheduler, whose shape decodes ``optimizer_metadata``. Built on one-element stand-ins
    grouped as the real parameters are, so it costs nothing for a large model."""
    optimizer_factory, scheduler_factory = run_optimizer_factories(cfg)
    index = {id(p): i for i, p in enumerate(params)}
    groups = param_groups(list(params), cfg.train.weight_decay)
    order = [index[id(p)] for group in groups for p in group["params"]]
    stand_ins = [dict(group, params=[torch.zeros(1, requires_grad=True) for _ in group["params"]]) for group in groups]
    template = optimizer_factory(stand_ins)
    scheduler_factory(template)  # adds "initial_lr" to every group, as on the peers
    initialize_optimizer_state_(template)
    return order, template.state_dict()
