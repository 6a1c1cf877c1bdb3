"""Where documents come from: a hub dataset id (streamed), local text/jsonl/parquet files or folders, or the embedded
default corpus. Everything is opened as a streaming ``datasets.IterableDataset`` so a 100 GB corpus is read in
chunks and never sits in memory; every row is one document.

Local text files hold one document per blank-line-separated block (the BERT pretraining-data convention); jsonl and
parquet rows are documents with the text in ``DataSpec.text_column``.
"""

from __future__ import annotations

import codecs
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import datasets

from peer.config import DataSpec
from peer.errors import UserError

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"
TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst"}
JSON_SUFFIXES = {".jsonl", ".json", ".ndjson"}
PARQUET_SUFFIXES = {".parquet"}
SNIFF_BYTES = 8192
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def describe_source(spec: DataSpec) -> str:
    return "the embedded corpus" if spec.source == EMBEDDED else repr(spec.source)


def open_source(spec: DataSpec) -> tuple[datasets.IterableDataset, str]:
    """The source as a streaming dataset, and the name of its text column."""
    if spec.source == EMBEDDED:
        from peer.data.embedded import load_embedded

        return load_embedded().select_columns(["text"]).to_iterable_dataset(), "text"
    path = Path(spec.source).expanduser()
    if path.exists():
        return _open_local(path, spec.text_column)
    if not _HUB_ID.match(spec.source) or spec.source.startswith((".", "~")):
        raise UserError(f"corpus not found: {spec.source}")
    return _open_hub(spec), spec.text_column


def _open_local(path: Path, text_column: str) -> tuple[datasets.IterableDataset, str]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and _visible(p, path))
    if not files:
        raise UserError(f"corpus folder {path} holds no files")
    formats = {_file_format(f) for f in files}
    if len(formats) > 1:
        raise UserError(f"corpus folder {path} mixes file formats ({', '.join(sorted(formats))}); use one per run")
    fmt = formats.pop()
    data_files = [str(f) for f in files]
    logger.info("streaming %d %s file(s) from %s", len(files), fmt, path)
    if fmt == "text":
        ds = datasets.load_dataset("text", data_files=data_files, split="train", streaming=True, sample_by="paragraph")
        return ds, "text"
    ds = datasets.load_dataset(fmt, data_files=data_files, split="train", streaming=True)
    return ds, text_column


def _visible(file: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in file.relative_to(root).parts)


def _file_format(file: Path) -> str:
    """'text', 'json' or 'parquet' by suffix and content; a binary file that is not parquet is refused."""
    suffix = file.suffix.lower()
    head = _head(file)
    if suffix in PARQUET_SUFFIXES:
        if not head.startswith(b"PAR1"):
            raise UserError(f"data file {file} is not a parquet file")
        return "parquet"
    if not _looks_like_text(head):
        raise UserError(f"data file {file} is not text (binary content); expected UTF-8 text, .jsonl or .parquet")
    return "json" if suffix in JSON_SUFFIXES else "text"


def _head(file: Path) -> bytes:
    with file.open("rb") as f:
        return f.read(SNIFF_BYTES)


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


def _open_hub(spec: DataSpec) -> datasets.IterableDataset:
    try:
        return datasets.load_dataset(spec.source, spec.hub_config, split=spec.hub_split, streaming=True)
    except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError, ...)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"corpus {spec.source!r} is not a local path and could not be loaded from the Hugging Face hub: {reason}"
        ) from None


def iter_texts(spec: DataSpec, ds: datasets.IterableDataset, text_column: str) -> Iterator[str]:
    """Non-empty document texts of a streaming dataset; a missing column or a failing stream is one clear line."""
    try:
        for row in ds:
            if text_column not in row:
                raise UserError(
                    f"{describe_source(spec)} has no column {text_column!r} (columns: {', '.join(sorted(row))}); "
                    "set data.text_column"
                )
            text = row[text_column]
            if isinstance(text, str) and text.strip():
                yield text.strip()
    except UserError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"reading {describe_source(spec)} failed: {reason}") from None
