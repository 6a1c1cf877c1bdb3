"""Checkpoints on disk: atomic saves with a sha256 manifest, keep-last-N, and recovery after a crash.

The guarantee: a directory named ``ckpt-<step:06d>`` exists only if its every file was written, fsynced and listed
(size + sha256) in its ``manifest.json``. That holds across SIGKILL and power loss because a save goes

    ckpt-<step>.tmp/  ->  write files  ->  fsync each file  ->  manifest.json (written last, fsynced)
                      ->  fsync the tmp dir  ->  rename to ckpt-<step>/  ->  fsync the parent dir

and deletion renames to ``*.tmp`` first. So after a crash there is at most a ``*.tmp`` left over, which
``recover()`` removes on start. Files damaged later (disk errors, a careless hand) are caught by ``recover()``
re-hashing every manifest: a corrupt checkpoint is renamed ``*.corrupt`` (kept for inspection, never served).

Each checkpoint is a model dir in ``peer.modeling``'s layout (``AutoModel.from_pretrained`` loads its root) plus
``training_state.json`` {"step", "samples", "run_id", "stage"}, its model card ``README.md``
(``coordinator.card``) and, for checkpoints pulled from the swarm,
``optimizer.safetensors`` (per-parameter optimizer state and DiLoCo outer momentum by parameter name) with the
resume fields {"scheduler_step", "optimizer_state", "outer_momentum"} (``peer.run.state_format``). The manifest lists
every file, these included.
A checkpoint's exports (``coordinator.exports``: its bf16, int8, ... forms) live in its ``exports/`` subdirectory,
each with a manifest of its own: not listed in the checkpoint's manifest, so building one later never changes what
the checkpoint's verification checks, and inside its directory, so deleting the checkpoint deletes them with it.
One process writes (the coordinator); readers list and verify. The manifest's type and its one reader are
``peer.run.checkpoint_manifest``'s, which the download servers (``coordinator.api.checkpoint_files``) read with too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.store import CheckpointRow, Store
from peer.config import DataSpec
from peer.errors import UserError
from peer.run.checkpoint_layout import TRAINING_STATE_FILE, checkpoint_name, parse_step
from peer.run.checkpoint_manifest import MANIFEST, CheckpointManifest, CorruptCheckpoint, FileDigest, read_manifest

logger = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"
CORRUPT_SUFFIX = ".corrupt"
_HASH_CHUNK = 1 << 20


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hash_and_fsync(path: Path) -> tuple[int, str]:
    """Reads the file once: its size and sha256, then makes it durable."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        os.fsync(f.fileno())
    return size, digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json_durably(path: Path, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def write_manifest(directory: Path, header: dict) -> list[FileDigest]:
    """Makes ``directory`` durable and describes it: hashes and fsyncs every file under it, fsyncs its
    subdirectories, then writes ``manifest.json`` (``header`` + the files' size and sha256) last and fsyncs the
    directory. The caller renames the directory into place afterwards, so a reader sees either no manifest or one
    that matches every byte. Shared by checkpoints and their exports (``coordinator.exports``)."""
    files: list[FileDigest] = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel == MANIFEST:
            raise UserError(f"{directory} already holds a {MANIFEST}")
        size, sha = _hash_and_fsync(path)
        files.append(FileDigest(rel, size, sha))
    for d in sorted((p for p in directory.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        _fsync_path(d, directory=True)
    _write_json_durably(directory / MANIFEST, {**header, "files": [f.to_dict() for f in files]})
    _fsync_path(directory, directory=True)
    return files


def _row(manifest: CheckpointManifest) -> CheckpointRow:
    return CheckpointRow(
        name=manifest.name,
        step=manifest.step,
        created=manifest.created,
        files=list(manifest.files),
        stage=manifest.stage,
    )


def verify_checkpoint(ckpt_dir: Path) -> CheckpointRow:
    """Re-hashes every file listed in the manifest; returns the checkpoint or raises CorruptCheckpoint naming the
    first file that differs."""
    manifest = read_manifest(ckpt_dir)
    expected = parse_step(ckpt_dir.name)
    if expected is not None and expected != manifest.step:
        raise CorruptCheckpoint(f"{ckpt_dir.name}: manifest says step {manifest.step}")
    for f in manifest.files:
        path = ckpt_dir / f.path
        if not path.is_file():
            raise CorruptCheckpoint(f"{ckpt_dir.name}: missing file {f.path}")
        size = path.stat().st_size
        if size != f.size:
            raise CorruptCheckpoint(f"{ckpt_dir.name}: {f.path} has {size} bytes, manifest says {f.size}")
        if _sha256(path) != f.sha256:
            raise CorruptCheckpoint(f"{ckpt_dir.name}: {f.path} does not match its sha256")
    return _row(manifest)


@dataclass
class RecoveryReport:
    """What ``CheckpointDir.recover`` found: leftovers removed, checkpoints verified, corrupt ones set aside."""

    removed_tmp: list[str] = field(default_factory=list)
    verified: list[CheckpointRow] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)  # one message per corrupt checkpoint


class CheckpointDir:
    """``<data_dir>/checkpoints``: the one writer of checkpoints. ``keep_last`` >= 1 checkpoints are kept. ``data``,
    the run's corpus, is named in each checkpoint's model card (None: the card says it is not recorded)."""

    def __init__(self, root: str | Path, keep_last: int = 3, data: DataSpec | None = None):
        if keep_last < 1:
            raise UserError(f"keep_last must be at least 1, got {keep_last}")
        self.root = Path(root)
        self.keep_last = keep_last
        self.data = data
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.root / name

    def _dirs(self) -> list[Path]:
        """Final checkpoint dirs, oldest step first."""
        found = [(parse_step(p.name), p) for p in self.root.iterdir() if p.is_dir()]
        return [p for step, p in sorted((s, p) for s, p in found if s is not None)]

    def list(self) -> list[CheckpointRow]:
        """Checkpoints with a well-formed manifest, oldest first (cheap: does not re-hash; ``recover`` does)."""
        rows = []
        for p in self._dirs():
            try:
                rows.append(_row(read_manifest(p)))
            except CorruptCheckpoint as e:
                logger.warning("skipping %s", e)
        return rows

    def latest(self) -> CheckpointRow | None:
        rows = self.list()
        return rows[-1] if rows else None

    def recover(self) -> RecoveryReport:
        """Start-up pass: removes ``*.tmp`` leftovers of interrupted saves/deletes and re-verifies every checkpoint,
        renaming corrupt ones to ``*.corrupt`` so they are never listed or served."""
        report = RecoveryReport()
        for p in sorted(self.root.iterdir()):
            if p.name.endswith(TMP_SUFFIX):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                report.removed_tmp.append(p.name)
        for p in self._dirs():
            try:
                report.verified.append(verify_checkpoint(p))
            except CorruptCheckpoint as e:
                report.corrupt.append(str(e))
                logger.error("corrupt checkpoint: %s (moved aside)", e)
                self._set_aside(p)
        _fsync_path(self.root, directory=True)
        return report

    def _set_aside(self, p: Path) -> None:
        target = p.with_name(p.name + CORRUPT_SUFFIX)
        n = 1
        while target.exists():
            target = p.with_name(f"{p.name}{CORRUPT_SUFFIX}.{n}")
            n += 1
        p.rename(target)

    def save(
        self, step: int, write_files: Callable[[Path], None], training_state: dict, store: Store | None = None
    ) -> CheckpointRow:
        """Saves checkpoint ``step`` atomically. ``write_files(dir)`` writes the model files into ``dir`` (an empty
        directory); ``training_state`` is written as ``training_state.json`` (its "stage", the growth stage of the
        model, also goes into the manifest) and, when ``dir`` is a model dir, the model card as ``README.md``
        (replacing any copied in). If the checkpoint exists already it
        is returned unchanged (saves are idempotent per step). Records the checkpoint in ``store`` if given and
        then applies keep-last-N."""
        name = checkpoint_name(step)
        final = self.root / name
        if final.is_dir():
            row = verify_checkpoint(final)
            if store is not None:
                store.record_checkpoint(row)
            return row
        started = time.perf_counter()
        tmp = self.root / (name + TMP_SUFFIX)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        write_files(tmp)
        _write_json_durably(tmp / TRAINING_STATE_FILE, {**training_state, "step": step})
        if (tmp / "config.json").is_file():
            self._write_card(tmp)
        if (tmp / MANIFEST).exists():
            raise UserError(f"write_files must not write {MANIFEST}")
        created = time.time()
        stage = int(training_state.get("stage", 0))
        files = write_manifest(tmp, {"step": step, "stage": stage, "created": created})
        os.rename(tmp, final)
        _fsync_path(self.root, directory=True)
        row = CheckpointRow(
            name=name, step=step, created=created, files=files, save_seconds=time.perf_counter() - started, stage=stage
        )
        logger.info("saved checkpoint %s (%.1f MB) in %.2f s", name, row.size_bytes / 1e6, row.save_seconds)
        if store is not None:
            store.record_checkpoint(row)
        self.prune(store)
        return row

    def _write_card(self, model_dir: Path) -> None:
        """A card that cannot be written (an unreadable growth.json, say) is a warning, never a lost checkpoint."""
        from coordinator.card import write_model_card  # here: the card pulls in transformers and peer.growth

        try:
            write_model_card(model_dir, data=self.data)
        except (OSError, ValueError, UserError) as e:
            logger.warning("%s saved without a model card: %s", model_dir.name.removesuffix(TMP_SUFFIX), e)

    def _stage_ends(self) -> set[str]:
        """Names of the newest checkpoint of every growth stage but the newest checkpoint's own."""
        rows = self.list()
        newest = {r.stage: r.name for r in rows}  # oldest first, so each stage's newest wins
        if rows:
            newest.pop(rows[-1].stage, None)
        return set(newest.values())

    def prune(self, store: Store | None = None) -> list[str]:
        """Deletes all but the newest ``keep_last`` checkpoints, never the newest one that verifies: if the newest
        checkpoints are damaged, the newest good one is kept as well (and the damaged ones are left for
        ``recover`` to report). Nor the last checkpoint of each growth stage before the newest checkpoint's: the
        state before a switch, which no later checkpoint can give back (growth does not run backwards). Deletion
        renames to ``*.tmp`` first, so a crash mid-delete leaves nothing visible."""
        dirs = self._dirs()
        keep = {p.name for p in dirs[-self.keep_last :]} | self._stage_ends()
        for p in reversed(dirs):
            try:
                verify_checkpoint(p)
            except CorruptCheckpoint as e:
                logger.warning("not counting %s as the newest good checkpoint: %s", p.name, e)
                continue
            keep.add(p.name)
            break
        removed = []
        for p in dirs:
            if p.name in keep:
                continue
            doomed = p.with_name(p.name + TMP_SUFFIX)
            os.rename(p, doomed)
            _fsync_path(self.root, directory=True)
            shutil.rmtree(doomed)
            removed.append(p.name)
            if store is not None:
                store.remove_checkpoint(p.name)
        if removed:
            logger.info("removed old checkpoints %s (keep_last=%d)", ", ".join(removed), self.keep_last)
        return removed


def sync_store(store: Store, rows: list[CheckpointRow]) -> None:
    """Makes the store's checkpoint table equal to ``rows`` (the verified checkpoints after ``recover``)."""
    names = {r.name for r in rows}
    for old in store.checkpoints():
        if old.name not in names:
            store.remove_checkpoint(old.name)
    known = {c.name: c for c in store.checkpoints()}
    for r in rows:
        prev = known.get(r.name)
        save_seconds = prev.save_seconds if prev is not None else None
        store.record_checkpoint(
            CheckpointRow(
                name=r.name, step=r.step, created=r.created, files=r.files, save_seconds=save_seconds, stage=r.stage
            )
        )
