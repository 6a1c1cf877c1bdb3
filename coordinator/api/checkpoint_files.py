"""Read-only access to the checkpoints on disk, for the HTTP and gRPC download endpoints.

A checkpoint is visible only once its ``manifest.json`` exists (the saver writes it last and renames the directory
into place), so a half-written ``ckpt-*.tmp/`` is never listed or served. Only files named in the manifest can be
fetched: a request path is checked for traversal (``..``, absolute, backslashes) *and* looked up in the manifest, and
the resolved file must still lie inside the checkpoint directory (no symlink escapes).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from peer.errors import UserError

MANIFEST = "manifest.json"
_NAME = re.compile(r"^ckpt-\d+$")


class CheckpointNotFound(UserError):
    """No such checkpoint, or no such file in it."""


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

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> FileDigest:
        for f in self.files:
            if f.path == path:
                return f
        raise CheckpointNotFound(f"{path} is not a file of checkpoint {self.name}")

    def to_dict(self) -> dict:
        return {"name": self.name, "step": self.step, "created": self.created,
                "files": [f.to_dict() for f in self.files]}  # fmt: skip


def check_relative_path(path: str) -> str:
    """Returns ``path`` normalised to '/'-separated form, or raises UnsafePath if it could leave its directory."""
    if not path or "\\" in path or "\x00" in path:
        raise UnsafePath(f"bad file path {path!r}")
    parts = PurePosixPath(path).parts
    if path.startswith("/") or any(p in ("..", ".") for p in path.split("/")):
        raise UnsafePath(f"file path {path!r} leaves the checkpoint directory")
    return "/".join(parts)


def read_manifest(ckpt_dir: Path) -> CheckpointManifest:
    """Parses ``<ckpt_dir>/manifest.json``; raises CheckpointNotFound if it is missing or malformed."""
    try:
        data = json.loads((ckpt_dir / MANIFEST).read_text())
        files = tuple(FileDigest(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in data["files"])
        step = int(data["step"])
        created = (ckpt_dir / MANIFEST).stat().st_mtime
    except FileNotFoundError:
        raise CheckpointNotFound(f"checkpoint {ckpt_dir.name} has no manifest") from None
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointNotFound(f"checkpoint {ckpt_dir.name} has a malformed manifest: {e}") from None
    return CheckpointManifest(name=ckpt_dir.name, step=step, created=created, files=files)


class CheckpointFiles:
    """The checkpoints under one directory, read afresh on each call (the saver adds and prunes them meanwhile)."""

    def __init__(self, checkpoints_dir: str | Path):
        self.root = Path(checkpoints_dir)

    def list(self) -> list[CheckpointManifest]:
        """Complete checkpoints, oldest first (the newest is last, as the JSON API lists them)."""
        found = []
        if self.root.is_dir():
            for d in self.root.iterdir():
                if _NAME.match(d.name) and d.is_dir():
                    try:
                        found.append(read_manifest(d))
                    except CheckpointNotFound:
                        continue  # pruned meanwhile, or not finished: not a checkpoint yet
        return sorted(found, key=lambda m: (m.step, m.created))

    def manifest(self, name: str) -> CheckpointManifest:
        """The named checkpoint's manifest; ``latest`` names the newest one."""
        if name == "latest":
            found = self.list()
            if not found:
                raise CheckpointNotFound("the coordinator has no checkpoint yet")
            return found[-1]
        if not _NAME.match(name):
            raise CheckpointNotFound(f"no checkpoint named {name!r}")
        return read_manifest(self.root / name)

    def resolve(self, name: str, path: str) -> tuple[Path, FileDigest | None]:
        """The on-disk path of one file of a checkpoint and its manifest entry (None for manifest.json itself)."""
        rel = check_relative_path(path)
        manifest = self.manifest(name)
        entry = None if rel == MANIFEST else manifest.file(rel)
        ckpt_dir = (self.root / manifest.name).resolve()
        full = (ckpt_dir / rel).resolve()
        if not full.is_relative_to(ckpt_dir):
            raise UnsafePath(f"file path {path!r} leaves the checkpoint directory")
        if not full.is_file():
            raise CheckpointNotFound(f"{rel} of checkpoint {manifest.name} is missing on disk")
        return full, entry
