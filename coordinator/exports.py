"""A checkpoint's exports on disk: ``ckpt-<step>/exports/<form>/``, each a whole model dir (``coordinator.export``)
with a manifest of its own, served beside the checkpoint (``coordinator.api``).

The guarantee is the checkpoints' one: a directory ``exports/<form>`` exists only with every file written, fsynced
and listed (size + sha256) in its ``manifest.json``. An export is built outside the checkpoint (in the background
exporter's work dir), described there by ``stage`` and moved in by ``publish``, one ``rename``; so a crash at any
moment leaves at most a staging dir outside the checkpoint, never half an export that is listed or served.

Why inside the checkpoint's directory but outside its manifest: keep-last-N pruning (rename, then delete the whole
directory) takes the exports with their checkpoint, and the checkpoint's manifest, written when it was saved, stays
exactly what its verification and every download check. Publishing into a checkpoint pruned meanwhile fails (its
directory is gone), and the export is dropped.

A form that failed to build is recorded beside the exports (``<form>.failed.json``: attempts and the last error), so
a restarted coordinator does not retry it forever and goes with the checkpoint when it is pruned.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from coordinator.checkpoints import write_manifest
from peer.run.checkpoint_layout import parse_step
from peer.run.checkpoint_manifest import CheckpointManifest, CheckpointNotFound, read_manifest

logger = logging.getLogger(__name__)

EXPORTS_SUBDIR = "exports"
FAILED_SUFFIX = ".failed.json"
_FORM = re.compile(r"^[a-z][a-z0-9_]*$")


class NoSuchExport(CheckpointNotFound):
    """The checkpoint exists but has no such export (not built yet, failed, or not a form it builds)."""


def export_path(ckpt_dir: Path, form: str) -> Path:
    if not _FORM.match(form):
        raise NoSuchExport(f"no export form named {form!r}")
    return Path(ckpt_dir) / EXPORTS_SUBDIR / form


def read_export(ckpt_dir: Path, form: str) -> CheckpointManifest:
    """The manifest of ``form``'s export of the checkpoint at ``ckpt_dir``, named after the checkpoint. Raises
    NoSuchExport (saying which forms there are) if it is not there or its manifest is unreadable."""
    ckpt_dir = Path(ckpt_dir)
    path = export_path(ckpt_dir, form)
    try:
        manifest = read_manifest(path)
    except CheckpointNotFound:
        built = ", ".join(list_exports(ckpt_dir)) or "none yet"
        raise NoSuchExport(f"checkpoint {ckpt_dir.name} has no {form} export (built: {built})") from None
    step = parse_step(ckpt_dir.name)
    if step is not None and manifest.step != step:
        raise NoSuchExport(f"the {form} export in {ckpt_dir.name} says step {manifest.step}")
    return dataclasses.replace(manifest, name=ckpt_dir.name)


def list_exports(ckpt_dir: Path) -> dict[str, CheckpointManifest]:
    """Every complete export of the checkpoint, by form (sorted); cheap: manifests are read, files not re-hashed."""
    root = Path(ckpt_dir) / EXPORTS_SUBDIR
    found = {}
    try:
        entries = sorted(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return {}
    for d in entries:
        if _FORM.match(d.name) and d.is_dir():
            try:
                found[d.name] = dataclasses.replace(read_manifest(d), name=Path(ckpt_dir).name)
            except CheckpointNotFound:
                continue  # not ours (nothing unfinished is ever renamed here)
    return found


def stage(staged: Path, step: int, form: str) -> None:
    """Makes a finished export dir ``staged`` durable and writes its manifest (last), ready for ``publish``."""
    write_manifest(Path(staged), {"step": step, "form": form, "created": time.time()})


def publish(staged: Path, ckpt_dir: Path, form: str) -> bool:
    """Moves the staged export into ``ckpt_dir/exports/<form>`` in one rename (same filesystem); replaces nothing.
    False if the checkpoint is gone (pruned meanwhile) or already has the form: the staged dir is then left to the
    caller."""
    target = export_path(ckpt_dir, form)
    try:
        target.parent.mkdir(exist_ok=True)  # not parents=True: a pruned checkpoint must not come back as a stub
        os.rename(staged, target)
    except FileNotFoundError:
        logger.info("%s was pruned before its %s export was published", Path(ckpt_dir).name, form)
        return False
    except OSError as e:  # the form is there already (ENOTEMPTY/EEXIST) or the disk refused
        logger.warning("could not publish the %s export of %s: %s", form, Path(ckpt_dir).name, e.strerror or e)
        return False
    fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


@dataclass(frozen=True)
class ExportFailure:
    attempts: int
    error: str


def failures(ckpt_dir: Path) -> dict[str, ExportFailure]:
    """The forms whose build failed so far, by form."""
    root = Path(ckpt_dir) / EXPORTS_SUBDIR
    found = {}
    for path in root.glob(f"*{FAILED_SUFFIX}") if root.is_dir() else ():
        try:
            data = json.loads(path.read_text())
            found[path.name.removesuffix(FAILED_SUFFIX)] = ExportFailure(int(data["attempts"]), str(data["error"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def record_failure(ckpt_dir: Path, form: str, error: str) -> int:
    """Counts one more failed build of ``form``; returns the attempts so far (0 if the checkpoint is gone)."""
    attempts = failures(ckpt_dir).get(form, ExportFailure(0, "")).attempts + 1
    path = export_path(ckpt_dir, form).with_name(form + FAILED_SUFFIX)
    try:
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"attempts": attempts, "error": error}))
        os.replace(tmp, path)
    except FileNotFoundError:
        return 0
    return attempts
