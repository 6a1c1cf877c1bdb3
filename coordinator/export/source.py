"""What an export is made from: a coordinator checkpoint (``ckpt-<step>/``, a downloaded copy of one) or a
``peer grow`` output, read as the pretraining models plus where they came from.

Both are HF model dirs in ``peer.modeling``'s layout; a checkpoint also has ``training_state.json`` (its step) and
``manifest.json`` (sha256 of every file), a grown dir ``growth.json`` (step 0). The optimizer state is never read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from peer.errors import UserError
from peer.run.checkpoint_layout import TRAINING_STATE_FILE, parse_step
from peer.run.checkpoint_manifest import MANIFEST, CheckpointNotFound, read_manifest

GROWTH_RECORD = "growth.json"  # peer.growth.artifact.GROWTH_RECORD, without importing the growth code
ARCHITECTURES = ("electra", "albert")


@dataclass(frozen=True)
class ExportSource:
    """A model dir to export from, checked (config.json of a supported model type; the manifest's sha256 where there
    is one) but not loaded: ``load`` does that."""

    path: Path
    kind: str  # "checkpoint" | "grown" | "model dir"
    architecture: str  # "electra" | "albert"
    step: int | None
    run_id: str | None
    weights_sha256: str | None  # of model.safetensors, from the manifest or growth.json

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "name": self.path.name,
            "kind": self.kind,
            "architecture": self.architecture,
            "step": self.step,
            "run_id": self.run_id,
            "weights_sha256": self.weights_sha256,
        }

    def load(self):
        """(PretrainingModels in eval mode, tokenizer)."""
        from transformers import AutoTokenizer

        from peer.modeling import load_models

        models = load_models(self.path).eval()
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.path)
        except (OSError, ValueError) as e:
            raise UserError(f"no usable tokenizer in {self.path}: {str(e).splitlines()[0]}") from None
        return models, tokenizer


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"unreadable {path}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return data


def read_source(path: str | Path, verify: bool = True) -> ExportSource:
    """Checks ``path`` is something to export from and reads its provenance. With ``verify``, every file its manifest
    lists (the optimizer state excepted: an export does not read it) is re-hashed, so a damaged checkpoint is
    refused rather than exported."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"SRC {path} is not a directory (give a checkpoint dir or a `peer grow` output)")
    if not (path / "config.json").is_file():
        raise UserError(f"SRC {path} is not a model dir (no config.json)")
    architecture = _json(path / "config.json").get("model_type", "")
    if architecture not in ARCHITECTURES:
        known = ", ".join(ARCHITECTURES)
        raise UserError(f"SRC {path} holds a {architecture or 'untyped'!r} model; exports know {known}")
    step = run_id = sha = None
    kind = "model dir"
    if (path / TRAINING_STATE_FILE).is_file():
        state = _json(path / TRAINING_STATE_FILE)
        kind, step, run_id = "checkpoint", int(state.get("step", 0)), state.get("run_id")
    elif (path / GROWTH_RECORD).is_file():
        kind, step = "grown", 0
        sha = (_json(path / GROWTH_RECORD).get("sha256") or {}).get("model.safetensors")
    if step is None:
        step = parse_step(path.name)
    if (path / MANIFEST).is_file():
        try:
            manifest = read_manifest(path)
        except CheckpointNotFound as e:
            raise UserError(str(e)) from None
        sha = next((f.sha256 for f in manifest.files if f.path == "model.safetensors"), sha)
        if verify:
            from peer.run.state_format import OPTIMIZER_FILE

            _verify(path, [f for f in manifest.files if f.path != OPTIMIZER_FILE])
    return ExportSource(path.resolve(), kind, architecture, step, run_id, sha)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, files) -> None:
    for f in files:
        target = path / f.path
        if not target.is_file():
            raise UserError(f"SRC {path} is missing {f.path}, which its manifest lists")
        if target.stat().st_size != f.size or _sha256(target) != f.sha256:
            raise UserError(f"SRC {path}: {f.path} does not match its manifest (damaged checkpoint)")
