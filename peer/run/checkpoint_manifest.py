"""A checkpoint's manifest, the one description of a checkpoint both sides share: its name, global step, growth
stage, creation time and every file with its size and sha256.

The coordinator writes it last (a checkpoint without one is not listed or served) and serves the files it names;
a downloader verifies every file against it. ``read_manifest`` is the one reader of a manifest on disk: the
coordinator's checkpoint directory (listing, re-verifying after a crash) and its download servers both call it.
File paths in it are checked for traversal (``check_relative_path``) on both sides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from peer.errors import UserError

MANIFEST = "manifest.json"


class CheckpointNotFound(UserError):
    """No such checkpoint, or no such file in it."""


class CorruptCheckpoint(CheckpointNotFound):
    """A checkpoint dir whose manifest is missing, unreadable or lists an unsafe path, or whose files do not match
    it. To a reader it holds no checkpoint: the coordinator sets it aside, its servers answer "not found"."""


class UnsafePath(UserError):
    """A request path that points outside the checkpoint directory."""


@dataclass(frozen=True)
class FileDigest:
    path: str  # relative to the checkpoint dir, '/'-separated
    size: int
    sha256: str

    def to_dict(self) -> dict:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class CheckpointManifest:
    name: str
    step: int
    created: float  # when the manifest was written (its mtime): the checkpoint became visible then
    files: tuple[FileDigest, ...]
    # the growth stage of the model it holds (``growth.schedule``: stage k runs after the k-th switch; 0 without
    # one): two checkpoints of one step, before and after a switch, differ by it, and a peer that starts from a
    # checkpoint starts in its stage. A manifest without it (written before stages existed) is stage 0
    stage: int = 0

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> FileDigest:
        for f in self.files:
            if f.path == path:
                return f
        raise CheckpointNotFound(f"{path} is not a file of checkpoint {self.name}")

    def to_dict(self) -> dict:
        return {"name": self.name, "step": self.step, "stage": self.stage, "created": self.created,
                "files": [f.to_dict() for f in self.files]}  # fmt: skip


def check_relative_path(path: str) -> str:
    """Returns ``path`` normalised to '/'-separated form, or raises UnsafePath if it could leave its directory."""
    if not path or "\\" in path or "\x00" in path:
        raise UnsafePath(f"bad file path {path!r}")
    parts = PurePosixPath(path).parts
    if path.startswith("/") or any(p in ("..", ".") for p in path.split("/")):
        raise UnsafePath(f"file path {path!r} leaves the checkpoint directory")
    return "/".join(parts)


def _listable(path: str) -> bool:
    """Whether a manifest may list ``path``: a safe relative path, and not the manifest itself."""
    try:
        return check_relative_path(path) != MANIFEST
    except UnsafePath:
        return False


def read_manifest(ckpt_dir: Path) -> CheckpointManifest:
    """Parses ``<ckpt_dir>/manifest.json``: its step, its ``created`` time (the manifest's mtime if it has none) and
    its files, every path checked with ``check_relative_path``. Raises CorruptCheckpoint if the manifest is missing,
    malformed, or lists an unsafe path or itself. Does not re-hash the files."""
    path = ckpt_dir / MANIFEST
    try:
        data = json.loads(path.read_text())
        files = tuple(FileDigest(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in data["files"])
        step = int(data["step"])
        stage = int(data.get("stage", 0))
        if stage < 0:
            raise ValueError(f"stage {stage} is negative")
        created = float(data.get("created", path.stat().st_mtime))
    except FileNotFoundError:
        raise CorruptCheckpoint(f"{ckpt_dir.name}: no {MANIFEST}") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpoint(f"{ckpt_dir.name}: unreadable {MANIFEST} ({e})") from None
    for f in files:
        if not _listable(f.path):
            raise CorruptCheckpoint(f"{ckpt_dir.name}: manifest lists an unsafe path {f.path!r}")
    return CheckpointManifest(name=ckpt_dir.name, step=step, created=created, files=files, stage=stage)
