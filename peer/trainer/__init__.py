"""Single-process trainer: optimizers (AdamW, LAMB), the warmup+decay schedule, the training loop and its
checkpoints. ``make_optimizer`` / ``make_scheduler`` double as ``hivemind.Optimizer`` factories for the swarm."""

from peer.trainer.checkpoint import TrainerState, checkpoint_dirs, restore_checkpoint, save_checkpoint
from peer.trainer.loop import (
    StepReport,
    TrainResult,
    autocast_dtype,
    compile_models,
    resolve_device,
    step_spec,
    train,
)
from peer.trainer.optim import Lamb, make_optimizer, param_groups
from peer.trainer.schedule import lr_factor, make_scheduler

__all__ = [
    "Lamb",
    "StepReport",
    "TrainResult",
    "TrainerState",
    "autocast_dtype",
    "checkpoint_dirs",
    "compile_models",
    "lr_factor",
    "make_optimizer",
    "make_scheduler",
    "param_groups",
    "resolve_device",
    "restore_checkpoint",
    "save_checkpoint",
    "step_spec",
    "train",
]
