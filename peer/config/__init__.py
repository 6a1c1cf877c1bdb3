"""Typed configuration: the run's ``RunConfig`` (composed of small specs, loadable from YAML, overridable by flags)
and one peer's own ``PeerSettings``.

Every part of a peer (growth, objective, data, trainer, swarm) and the coordinator reads its own spec from here, so a
run is described by a single file that the coordinator can publish and every peer can verify. What is one peer's
own business (its addresses, identity, keys, name) is a separate type that never travels (``PeerSettings``). Unknown
keys are an error, not a warning: a typo in a month-long run's config must fail at start, not silently use a default.

One module per job, all imported from here (``peer.config`` is the import path of the rest of the code):

- ``specs``: ``RunConfig`` and its specs (``ModelSpec``, ``GrowthSpec``, ..., ``SwarmSpec``), ``ConfigError``;
- ``peer_settings``: ``PeerSettings``, ``PEER_TRAIN_KEYS``, ``MOVED_TO_PEER``;
- ``stages``: ``model_stages`` (the growth schedule, checked);
- ``loading``: ``load_config``, ``config_from_dict``, ``config_to_dict``, ``peer_train_overrides``.
"""

from peer.config.loading import config_from_dict, config_to_dict, load_config, peer_train_overrides
from peer.config.peer_settings import (
    MOVED_TO_PEER,
    PEER_TRAIN_KEYS,
    PeerSettings,
    with_peer_train,
    without_peer_keys,
)
from peer.config.specs import (
    ConfigError,
    DataSpec,
    GrowthSpec,
    GrowthStage,
    ModelSpec,
    ObjectiveSpec,
    RunConfig,
    StageModel,
    SwarmSpec,
    TrainSpec,
)
from peer.config.stages import model_stages

__all__ = [
    "MOVED_TO_PEER",
    "PEER_TRAIN_KEYS",
    "ConfigError",
    "DataSpec",
    "GrowthSpec",
    "GrowthStage",
    "ModelSpec",
    "ObjectiveSpec",
    "PeerSettings",
    "RunConfig",
    "StageModel",
    "SwarmSpec",
    "TrainSpec",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "model_stages",
    "peer_train_overrides",
    "with_peer_train",
    "without_peer_keys",
]
