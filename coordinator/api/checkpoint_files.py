"""Read-only access to the checkpoints on disk, for the HTTP and gRPC download endpoints.

A checkpoint is visible only once its ``manifest.json`` exists (the saver writes it last and renames the directory
into place), so a half-written ``ckpt-*.tmp/`` is never listed or served. Only files named in the manifest can be
fetched: a request path is checked for traversal (``..``, absolute, backslashes) *and* looked up in the manifest, and
the resolved file must still lie inside the checkpoint directory (no symlink escapes).

A checkpoint's exports (``coordinator.exports``: ``<ckpt>/exports/<form>/`` with a manifest of their own) are served
the same way, by checkpoint and form; an export is visible once it is published whole, and gone with its checkpoint.
"""

from __future__ import annotations

import re
from pathlib import Path

from coordinator.exports import export_path, list_exports, read_export
from peer.run.checkpoint_manifest import (
    MANIFEST,
    CheckpointManifest,
    CheckpointNotFound,
    FileDigest,
    UnsafePath,
    check_relative_path,
    read_manifest,
)

_NAME = re.compile(r"^ckpt-\d+$")


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

    def exports(self, name: str) -> dict[str, CheckpointManifest]:
        """The published exports of a checkpoint, by form (``latest`` names the newest checkpoint)."""
        return list_exports(self.root / self.manifest(name).name)

    def export_manifest(self, name: str, form: str) -> CheckpointManifest:
        """The manifest of ``form``'s export of a checkpoint (named after the checkpoint); CheckpointNotFound, saying
        which forms are built, when it has none (yet)."""
        return read_export(self.root / self.manifest(name).name, form)

    def resolve(self, name: str, path: str, form: str = "") -> tuple[Path, FileDigest | None]:
        """The on-disk path of one file of a checkpoint, or of its ``form`` export when one is named, and its
        manifest entry (None for manifest.json itself)."""
        rel = check_relative_path(path)
        manifest = self.export_manifest(name, form) if form else self.manifest(name)
        entry = None if rel == MANIFEST else manifest.file(rel)
        base = (export_path(self.root / manifest.name, form) if form else self.root / manifest.name).resolve()
        full = (base / rel).resolve()
        if not full.is_relative_to(base):
            raise UnsafePath(f"file path {path!r} leaves the checkpoint directory")
        if not full.is_file():
            what = f"the {form} export of checkpoint" if form else "checkpoint"
            raise CheckpointNotFound(f"{rel} of {what} {manifest.name} is missing on disk")
        return full, entry
