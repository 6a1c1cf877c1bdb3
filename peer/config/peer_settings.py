"""One peer's own settings (``PeerSettings``), which never travel with the run config: its addresses, identity,
keys, name and compute; the ``train.*`` keys a peer may override for itself (``PEER_TRAIN_KEYS``); and the run
config keys that became peer settings (``MOVED_TO_PEER``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from peer.config.specs import ConfigError, RunConfig


@dataclass
class PeerSettings:
    """One peer's own settings: how this process reaches the swarm and who it is. The coordinator never publishes
    them and they are not in the run's fingerprint; ``peer join`` fills them from its flags (hivemind's names), and
    a run config file that still holds one of them is refused with the flag to use instead (``MOVED_TO_PEER``).

    Why each is the peer's and not the run's:

    - ``initial_peers``: whom this process dials first. A joiner through ``--coordinator`` gets the coordinator's
      addresses from ``GET /api/v1/run`` (next to the config, not inside it); inside the published config the list
      was the coordinator's own bootstrap list, which told a peer nothing.
    - ``host_maddrs``, ``announce_maddrs``, ``client_mode``, ``use_relay``, ``use_auto_relay``: this machine's ports,
      public address and NAT; published, the coordinator's network settings became every peer's.
    - ``identity_path``, ``auth_key``, ``peer_name``: who this peer is: its key file, its "NAME:SECRET" from the
      organiser's allowlist (also env ``WARMSWARM_AUTH_KEY``), its name on the dashboard (private runs default to
      the allowlisted name).
    - ``authority_public_key``: the key (OpenSSH text) this peer checks access tokens with. It is the run's key,
      but which key to trust is the peer's decision: normally the coordinator's ``/api/v1/run`` says it, and
      ``--authority_public_key`` pins it; a copy inside the published config would come from the party it checks.
      None with no ``auth_key``: an open run, no tokens.
    - ``coordinator_url``: where this peer got the run from (``--coordinator``); None for a run config file.

    The peer's own compute settings (device, precision, micro-batch, accumulation, compile) belong here too, for the
    same reason: what one volunteer's machine can do is not the run's to decide. Their run config keys stay, as the
    run's suggested defaults (``PEER_TRAIN_KEYS``). A setting that moves here from the run config for good adds its
    old ``section.key`` and its flag to ``MOVED_TO_PEER``.
    """

    initial_peers: list[str] = field(default_factory=list)
    host_maddrs: list[str] = field(default_factory=lambda: ["/ip4/0.0.0.0/tcp/0"])
    announce_maddrs: list[str] = field(default_factory=list)
    identity_path: str | None = None
    client_mode: bool = False
    use_relay: bool = True
    use_auto_relay: bool = False
    auth_key: str | None = None
    authority_public_key: str | None = None
    peer_name: str = ""
    coordinator_url: str | None = None
    # this machine's training step; None keeps the run config's train.<name> (a default every peer may override,
    # ``PEER_TRAIN_KEYS``). What auto means for device and precision: ``peer.trainer.hardware``.
    batch_size: int | Literal["auto"] | None = None  # auto: fitted to this machine (peer.trainer.batch_fit)
    grad_accum: int | None = None
    device: str | None = None
    precision: Literal["auto", "fp32", "bf16", "fp16"] | None = None
    compile: bool | None = None


PEER_TRAIN_KEYS = ("batch_size", "grad_accum", "device", "precision", "compile")
"""``train.*`` keys that are each peer's own choice (``PeerSettings`` fields of the same names): the run config
holds their default, and a peer overrides them for itself alone — with its flags, or with ``--set train.KEY=VALUE``
even when it joins through a coordinator. They change how fast a peer computes its gradients, never what the swarm
averages (the run's fingerprint leaves ``train`` out)."""


def with_peer_train(cfg: RunConfig, peer: PeerSettings) -> RunConfig:
    """``cfg`` with this peer's own training-step settings in ``cfg.train`` (those it set; the others stay the
    run's), checked: what the rest of the peer reads. A ``batch_size`` of ``auto`` leaves the run's in place until
    the session has fitted one (``peer.swarm.training_inputs.fit_micro_batch``)."""
    changes = {k: getattr(peer, k) for k in PEER_TRAIN_KEYS if getattr(peer, k) not in (None, "auto")}
    train = dataclasses.replace(cfg.train, **changes)
    for name in ("batch_size", "grad_accum"):
        if getattr(train, name) < 1:
            raise ConfigError(f"train.{name} must be >= 1, got {getattr(train, name)}")
    return dataclasses.replace(cfg, train=train)


MOVED_TO_PEER = {
    "swarm.initial_peers": "--initial_peers",
    "swarm.host_maddrs": "--host_maddrs",
    "swarm.announce_maddrs": "--announce_maddrs",
    "swarm.identity_path": "--identity_path",
    "swarm.client_mode": "--client_mode",
    "swarm.use_relay": "--no_relay",
    "swarm.use_auto_relay": "--use_auto_relay",
    "swarm.auth_key": "--auth_key",
    "swarm.authority_public_key": "--authority_public_key",
    "swarm.peer_name": "--peer_name",
    "swarm.coordinator_url": "--coordinator",
}
"""Run config keys (``section.key``) that became ``PeerSettings``, and the flag that sets each now: a config file
that still holds one gets that flag in its error, a published config from an older coordinator has it dropped."""


def without_peer_keys(data: dict) -> tuple[dict, list[str]]:
    """A published run config (``data``, as ``config_to_dict`` wrote it) without the keys that are ``PeerSettings``
    now (``MOVED_TO_PEER``), and those keys. Why: a coordinator from before the split publishes its own addresses,
    identity path and relay settings in the config; a peer ignores them (its own come from its flags) rather than
    refuse to join such a run. ``data`` itself is left as it was."""
    if not isinstance(data, dict):
        return data, []
    kept, dropped = dict(data), []
    for path in MOVED_TO_PEER:
        section, key = path.split(".")
        if isinstance(kept.get(section), dict) and key in kept[section]:
            kept[section] = {k: v for k, v in kept[section].items() if k != key}
            dropped.append(path)
    return (kept, sorted(dropped)) if dropped else (data, [])
