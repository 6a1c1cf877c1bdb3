"""Checkpoint 0: the files of the run's first checkpoint, grown from the run's recipe (``peer.growth``) or copied
from an existing model dir (``--init_from``). Each is a writer for ``CheckpointDir.save``: it fills the empty
directory it is given.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from peer.config import RunConfig
from peer.errors import UserError
from peer.run.checkpoint_layout import TRAINING_STATE_FILE
from peer.run.checkpoint_manifest import MANIFEST


def grow_initial_state(cfg: RunConfig, out_dir: Path) -> None:
    """Writes checkpoint 0's model files with the growth recipe (``peer.growth``) into ``out_dir``.

    The growth writes into a fresh subdirectory first (it keeps its own temp dir beside its target, which must stay
    inside our ``*.tmp`` checkpoint dir so that a crash leaves nothing in the checkpoints root) and is moved up."""
    from peer.growth.artifact import grow_run_initial_state

    grown = out_dir / "grown"
    grow_run_initial_state(cfg, grown)
    for item in sorted(grown.iterdir()):
        item.rename(out_dir / item.name)
    grown.rmdir()


def copy_model_dir(src: Path) -> Callable[[Path], None]:
    """A checkpoint writer that copies an existing model dir (its own manifest/training state excluded)."""
    if not (src / "config.json").is_file():
        raise UserError(f"--init_from {src} is not a model dir (no config.json)")

    def write(out: Path) -> None:
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src)
            if path.is_dir() or rel.as_posix() in (MANIFEST, TRAINING_STATE_FILE):
                continue
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out / rel)

    return write
