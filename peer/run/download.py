"""Downloads a checkpoint from a coordinator over HTTP or gRPC, resuming cut transfers and verifying every file.

Each file is fetched into ``<name>.part`` from the offset it already holds (HTTP ``Range`` + ``If-Range``, gRPC
``Download(offset)``), hashed as it is written (the held prefix is hashed first), and renamed into place only when
its size and sha256 match the manifest. A cut transfer is retried from where it stopped; if it still fails the
``.part`` file stays, and the same command later resumes it. A file that does not match is deleted and reported:
that is a corrupt copy on the server, not something a retry fixes.

A checkpoint's export (``form``: int8, bf16, ... as the coordinator builds and lists them) downloads the same way,
from its own manifest: the model in that form without the checkpoint's optimizer state.
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.client
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlparse

import grpc
from tqdm import tqdm

from peer.errors import UserError
from peer.run.checkpoint_manifest import MANIFEST, CheckpointManifest, FileDigest, check_relative_path
from peer.run.coordinator_client import CheckpointsAnswer, CoordinatorUnavailable, NotACoordinator, get_answer
from peer.run.writable_dir import check_writable_dir
from protos.warmswarm.v1 import coordinator_pb2 as pb
from protos.warmswarm.v1 import coordinator_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

HASH_BLOCK = 1 << 20
PART_SUFFIX = ".part"


class DownloadError(UserError):
    """A download that could not finish; its message says whether running it again helps."""


class _TransferCut(Exception):
    """The connection broke mid-file; the bytes so far are kept and the transfer can resume."""


@dataclass(frozen=True)
class DownloadResult:
    name: str
    step: int
    out_dir: Path
    files: int
    bytes_fetched: int  # transferred in this call
    bytes_reused: int  # already on disk (complete files, or .part prefixes resumed from)
    skipped: int = 0  # files of the checkpoint left out by include/exclude globs
    form: str = ""  # the export downloaded; empty: the checkpoint itself


class _Source:
    """One coordinator endpoint: reads manifests and byte ranges of checkpoint files."""

    def manifest(self, name: str, form: str = "") -> CheckpointManifest:
        """The manifest of checkpoint ``name`` or, with ``form``, of that export of it."""
        raise NotImplementedError

    def read(self, name: str, entry: FileDigest, offset: int, form: str = "") -> Iterator[bytes]:
        """Yields the file's bytes from ``offset``; raises _TransferCut when the connection breaks."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class _HttpSource(_Source):
    """Plain ``urllib``: on loopback it streams a file ~10x faster than httpx (it reads straight into large
    buffers), and the download is then bound by hashing and the disk rather than by HTTP parsing."""

    def __init__(self, base_url: str, timeout: float):
        self.base = base_url.rstrip("/")
        self.timeout = timeout

    def _open(self, url: str, headers: dict[str, str] | None = None):
        try:
            return urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=self.timeout)
        except urllib.error.HTTPError as e:
            detail = e.read()[:200].decode(errors="replace")
            raise DownloadError(f"GET {url}: HTTP {e.code} {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            raise _TransferCut(f"cannot reach {self.base}: {getattr(e, 'reason', e)}") from None

    def manifest(self, name: str, form: str = "") -> CheckpointManifest:
        try:
            listed = get_answer(self.base, CheckpointsAnswer, timeout=self.timeout).checkpoints
        except CoordinatorUnavailable as e:
            raise DownloadError(str(e)) from None
        if not listed:
            raise DownloadError(f"the coordinator at {self.base} has no checkpoint yet")
        chosen = listed[-1] if name == "latest" else next((c for c in listed if c.name == name), None)
        if chosen is None:
            raise DownloadError(f"no checkpoint {name!r} at {self.base} (have: {', '.join(c.name for c in listed)})")
        if not form:
            files = tuple(FileDigest(f.path, f.size, f.sha256) for f in chosen.files)
            return CheckpointManifest(chosen.name, chosen.step, chosen.created, files)
        export = chosen.exports.get(form)
        if export is None:
            others = [c.name for c in listed if form in c.exports]
            raise DownloadError(
                f"checkpoint {chosen.name} at {self.base} has no {form} export (yet; built: "
                f"{', '.join(chosen.exports) or 'none'})"
                + (f"; built for {', '.join(others)}: add --checkpoint {others[-1]}" if others else "")
            )
        files = tuple(FileDigest(f.path, f.size, f.sha256) for f in export.files)
        return CheckpointManifest(chosen.name, chosen.step, export.created, files)

    def read(self, name: str, entry: FileDigest, offset: int, form: str = "") -> Iterator[bytes]:
        where = f"exports/{quote(name)}/{quote(form)}" if form else f"checkpoints/{quote(name)}"
        url = f"{self.base}/{where}/{quote(entry.path)}"
        headers = {"Range": f"bytes={offset}-", "If-Range": f'"{entry.sha256}"'} if offset else {}
        with self._open(url, headers) as r:
            if r.status == 200 and offset:
                raise DownloadError(f"{url} does not support resuming (HTTP 200 to a Range request)")
            try:
                while data := r.read(HASH_BLOCK):
                    yield data
            except (http.client.HTTPException, OSError) as e:
                raise _TransferCut(f"{type(e).__name__}: {e}") from None


class _GrpcSource(_Source):
    _RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED,
                  grpc.StatusCode.ABORTED, grpc.StatusCode.INTERNAL)  # fmt: skip

    def __init__(self, target: str, timeout: float):
        self.target = target
        self.timeout = timeout
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 8 << 20)])
        self.stub = pb_grpc.CoordinatorStub(self.channel)

    def manifest(self, name: str, form: str = "") -> CheckpointManifest:
        try:
            m = self.stub.GetManifest(pb.GetManifestRequest(name=name, form=form), timeout=self.timeout)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:  # a gRPC server, but not one serving warmswarm.v1
                raise NotACoordinator(
                    f"grpc://{self.target} is not a warmswarm coordinator (GetManifest: {e.details()})"
                ) from None
            what = f"the {form} export of {name!r}" if form else f"manifest {name!r}"
            raise DownloadError(f"cannot get {what} from grpc://{self.target}: {e.details()}") from None
        files = tuple(FileDigest(f.path, f.digest.size_bytes, f.digest.sha256) for f in m.files)
        return CheckpointManifest(m.name, m.step, m.created, files)

    def read(self, name: str, entry: FileDigest, offset: int, form: str = "") -> Iterator[bytes]:
        request = pb.DownloadRequest(checkpoint=name, path=entry.path, offset=offset, form=form)
        expected = offset
        try:
            for chunk in self.stub.Download(request, wait_for_ready=False):
                if chunk.offset != expected:
                    raise DownloadError(f"{entry.path}: server sent offset {chunk.offset}, expected {expected}")
                expected += len(chunk.data)
                yield chunk.data
        except grpc.RpcError as e:
            if e.code() in self._RETRYABLE:
                raise _TransferCut(f"{e.code().name}: {e.details()}") from None
            raise DownloadError(f"{entry.path} from grpc://{self.target}: {e.code().name}: {e.details()}") from None

    def close(self) -> None:
        self.channel.close()


def _open_source(source: str, timeout: float) -> _Source:
    parsed = urlparse(source)
    if parsed.scheme in ("http", "https"):
        return _HttpSource(source, timeout)
    if parsed.scheme == "grpc" and parsed.netloc:
        return _GrpcSource(parsed.netloc, timeout)
    raise DownloadError(f"--from must be http(s)://HOST:PORT or grpc://HOST:PORT, got {source!r}")


def _sha256_of_prefix(path: Path) -> hashlib._Hash:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            h.update(block)
    return h


class _Sink:
    """Appends chunks to the ``.part`` file and hashes them on a worker thread, so receiving the next chunk overlaps
    with writing and hashing this one (all three release the GIL). ``drain()`` waits until the file holds every
    chunk handed over so far and re-raises a write error."""

    def __init__(self, out, digest):
        self.out = out
        self.digest = digest
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="download-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (data := self.queue.get()) is not None:
            try:
                if self.error is None:
                    self.out.write(data)
                    self.digest.update(data)
            except BaseException as e:  # kept for drain(): the receiving thread reports it
                self.error = e
            finally:
                self.queue.task_done()
        self.queue.task_done()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise DownloadError(f"cannot write {self.out.name}: {self.error}") from self.error

    def put(self, data: bytes) -> None:
        self._raise_if_failed()
        self.queue.put(data)

    def drain(self) -> int:
        """Waits for the pending chunks; returns the file's length."""
        self.queue.join()
        self._raise_if_failed()
        self.out.flush()
        return self.out.tell()

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()


def _fetch_file(
    src: _Source,
    name: str,
    entry: FileDigest,
    dest: Path,
    retries: int,
    on_bytes: Callable[[int], None],
    form: str = "",
) -> tuple[int, int]:
    """Brings ``dest`` to the manifest's content; returns (bytes fetched now, bytes reused from disk)."""
    if dest.is_file() and dest.stat().st_size == entry.size and _sha256_of_prefix(dest).hexdigest() == entry.sha256:
        on_bytes(entry.size)
        return 0, entry.size
    part = dest.with_name(dest.name + PART_SUFFIX)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if part.exists() and part.stat().st_size > entry.size:
        part.unlink()  # longer than the file: not a prefix of it
    reused = part.stat().st_size if part.exists() else 0
    digest = _sha256_of_prefix(part) if reused else hashlib.sha256()
    on_bytes(reused)
    fetched = 0
    attempt = 0
    with open(part, "ab") as out:
        sink = _Sink(out, digest)
        try:
            held = out.tell()
            while held < entry.size:
                try:
                    for data in src.read(name, entry, held, form):
                        if held + len(data) > entry.size:
                            raise DownloadError(f"{entry.path}: server sent more than the manifest's {entry.size} B")
                        sink.put(data)
                        held += len(data)
                        fetched += len(data)
                        on_bytes(len(data))
                    if held < entry.size:
                        raise _TransferCut(f"stream ended at {held} of {entry.size} bytes")
                except _TransferCut as e:
                    held = sink.drain()
                    if held == entry.size:
                        break  # every byte arrived before the cut (only the end-of-stream was lost); verified below
                    attempt += 1
                    if attempt > retries:
                        raise DownloadError(
                            f"download of {entry.path} cut at {held} of {entry.size} bytes ({e}); "
                            "run the same command again to resume"
                        ) from None
                    logger.warning("%s: %s; resuming from byte %d (retry %d/%d)", entry.path, e, held, attempt,
                                   retries)  # fmt: skip
                    time.sleep(min(2.0**attempt * 0.25, 5.0))
            sink.drain()
        finally:
            sink.close()
    if digest.hexdigest() != entry.sha256:
        part.unlink()
        raise DownloadError(
            f"{entry.path} of {name} failed verification: sha256 {digest.hexdigest()[:16]}… != manifest "
            f"{entry.sha256[:16]}… (the coordinator's copy is corrupt; the partial file was removed)"
        )
    part.replace(dest)
    return fetched, reused


def select_files(
    files: tuple[FileDigest, ...], include: list[str] | None, exclude: list[str] | None
) -> tuple[FileDigest, ...]:
    """The files whose path matches one of ``include`` (all when it is empty) and none of ``exclude``: shell globs
    over the whole '/'-separated path (``*`` crosses '/', so ``generator/*`` or ``*.json`` work as expected)."""

    def matches(path: str, globs: list[str]) -> bool:
        return any(fnmatch.fnmatchcase(path, g) for g in globs)

    return tuple(f for f in files if (not include or matches(f.path, include)) and not matches(f.path, exclude or []))


def download(
    source: str,
    out_dir: str | Path,
    checkpoint: str = "latest",
    retries: int = 3,
    timeout: float = 60.0,
    progress: bool = True,
    on_bytes: Callable[[int], None] | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    form: str = "",
) -> DownloadResult:
    """Downloads one checkpoint (``latest`` by default) from ``http(s)://HOST:PORT`` or ``grpc://HOST:PORT`` into
    ``out_dir``: every file of its manifest, verified, then ``manifest.json`` itself, so ``out_dir`` is a
    checkpoint directory that ``peer.modeling.load_models`` and ``from_pretrained`` read.
    ``include`` / ``exclude`` globs (``select_files``) leave files out, e.g. ``exclude=["optimizer.*"]`` for an
    inference user; the ``manifest.json`` written then lists only the files fetched, and ``excluded`` the others.
    ``form`` (e.g. ``int8``) downloads that export of the checkpoint instead, a model dir in that form (its card
    says how to load it), with ``form`` recorded in the ``manifest.json`` written.
    ``on_bytes(n)`` is told of every n bytes that reach the disk (after the progress bar)."""
    out = Path(out_dir)
    check_writable_dir(out, "--out")  # before the network: a bad --out is refused at once, with nothing fetched
    src = _open_source(source, timeout)
    try:
        manifest = src.manifest(checkpoint, form)
        for entry in manifest.files:
            check_relative_path(entry.path)  # a hostile manifest must not write outside out_dir
        wanted = select_files(manifest.files, include, exclude)
        if not wanted:
            raise DownloadError(
                f"--include/--exclude leave no file of {manifest.name} to fetch "
                f"(it has: {', '.join(f.path for f in manifest.files)})"
            )
        out.mkdir(parents=True, exist_ok=True)
        # manifest.json is written last and marks a complete checkpoint: drop an older one before touching files.
        (out / MANIFEST).unlink(missing_ok=True)
        total_fetched = total_reused = 0
        what = f"{manifest.name} {form}" if form else manifest.name
        with tqdm(total=sum(f.size for f in wanted), unit="B", unit_scale=True, unit_divisor=1024, disable=not progress,
                  desc=f"{what} via {urlparse(source).scheme}") as bar:  # fmt: skip

            def tick(n: int) -> None:
                bar.update(n)
                if on_bytes is not None:
                    on_bytes(n)

            for entry in wanted:
                bar.set_postfix_str(entry.path, refresh=False)
                fetched, reused = _fetch_file(src, manifest.name, entry, out / entry.path, retries, tick, form)
                total_fetched += fetched
                total_reused += reused
        record = {"files": [f.to_dict() for f in wanted], "step": manifest.step}
        if form:
            record["form"] = form
        if len(wanted) < len(manifest.files):
            record["excluded"] = [f.to_dict() for f in manifest.files if f not in wanted]
        (out / MANIFEST).write_text(json.dumps(record, indent=2) + "\n")
    except OSError as e:  # the local disk (the sources turn their network errors into their own exceptions)
        raise DownloadError(
            f"cannot write the checkpoint into {out}: {e}; the files so far are kept, run the same command again to "
            "resume"
        ) from None
    finally:
        src.close()
    return DownloadResult(manifest.name, manifest.step, out, len(wanted), total_fetched, total_reused,
                          len(manifest.files) - len(wanted), form)  # fmt: skip
