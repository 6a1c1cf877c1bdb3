"""The coordinator's one HTTP server: dashboard page, JSON API, ``/metrics`` and checkpoint files.

Built from objects ``coordinator.serving`` constructs (store, checkpoints dir, run info, metrics) — no globals — so
tests and the coordinator run as many apps side by side as they like. Checkpoint files are served with ``Range`` and
a strong ``ETag`` (the file's sha256 from the manifest), so ``curl -C -`` and the download client resume a cut
transfer and ``If-Range`` guards against resuming onto a different file. A checkpoint's exports (its bf16, int8, ...
forms, ``coordinator.exports``) are served alike under ``/exports/<checkpoint>/<form>/``, listed per checkpoint in
``/api/v1/checkpoints``. Every route that sends an ETag (the page, its static files, checkpoint and export files)
answers a request whose ``If-None-Match`` already names it with 304 and no body.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.staticfiles import NotModifiedResponse
from starlette.types import Message, Receive, Scope, Send

from coordinator.api.checkpoint_files import CheckpointFiles
from coordinator.api.evaluations import evaluation_entries, run_data, served_card
from coordinator.auth import TokenAuthority, token_response
from coordinator.metrics import CONTENT_TYPE, CoordinatorMetrics
from coordinator.reachability import BadReachabilityRequest, DialBack, ReachabilityRequest
from coordinator.store import Store
from peer.errors import UserError
from peer.run.checkpoint_manifest import CheckpointManifest, CheckpointNotFound, UnsafePath

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
FILE_CHUNK_BYTES = 1 << 20
MAX_AUTH_BODY = 16 << 10  # a token request is ~600 bytes; anything much larger is refused unread


@dataclass(frozen=True)
class RunInfo:
    """What a joining peer needs (``GET /api/v1/run``): the run config and where the swarm is."""

    run_id: str
    config: dict
    initial_peers: list[str] = field(default_factory=list)
    join_command: str = ""
    # {"authority": base64 of the coordinator's DHT subkey}: the only writer peers trust for <run_id>_bans
    bans: dict = field(default_factory=dict)
    # a private run: {"required": True, "authority_public_key": "<ssh-rsa ...>"}, the key peers check tokens with
    auth: dict = field(default_factory=lambda: {"required": False, "authority_public_key": None})


class _RevalidatedStaticFiles(StaticFiles):
    """StaticFiles whose responses say ``Cache-Control: no-cache``: without it a browser may reuse a cached
    ``dashboard.js`` for hours by heuristic freshness, and after an upgrade run an old script against the new page.
    Revalidating costs a 304 with no body."""

    def file_response(
        self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.setdefault("cache-control", "no-cache")
        return response


class _CountingFileResponse(FileResponse):
    """A FileResponse that reports the body bytes it actually sent (ranges included) to the metrics."""

    chunk_size = FILE_CHUNK_BYTES

    def __init__(self, *args, metrics: CoordinatorMetrics | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sent = 0

        async def counting_send(message: Message) -> None:
            nonlocal sent
            if message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await super().__call__(scope, receive, counting_send)
        finally:
            if self._metrics is not None:
                self._metrics.add_download_bytes("http", sent)


def export_entry(m: CheckpointManifest) -> dict:
    """An export as the checkpoint listing gives it: when it was published and its files."""
    return {"created": m.created, "files": [f.to_dict() for f in m.files]}


def create_http_app(
    store: Store,
    checkpoints_dir: str | Path,
    run_info: RunInfo,
    metrics: CoordinatorMetrics | None = None,
    authority: TokenAuthority | None = None,
) -> FastAPI:
    """The FastAPI app of one coordinator. ``metrics`` None builds one on ``store``; ``authority`` (a private run)
    serves ``POST /api/v1/auth/token``."""
    files = CheckpointFiles(checkpoints_dir)
    metrics = metrics if metrics is not None else CoordinatorMetrics(store)
    # No Swagger UI: it loads its JS from a CDN, and the coordinator must work offline (/openapi.json stays).
    app = FastAPI(title="warmswarm coordinator", docs_url=None, redoc_url=None)
    static = _RevalidatedStaticFiles(directory=STATIC_DIR)
    app.mount("/static", static, name="static")

    def unless_not_modified(request: Request, response: FileResponse) -> Response:
        """``response``, or 304 Not Modified (no body) when the request's ``If-None-Match`` (or, without one,
        ``If-Modified-Since``) says the client holds it already: StaticFiles' own rule for ``/static``, so every
        route with an ETag answers alike. ``response`` must have been built with its ``stat_result``."""
        if static.is_not_modified(response.headers, request.headers):
            return NotModifiedResponse(response.headers)
        return response

    @app.get("/", include_in_schema=False)
    def dashboard(request: Request) -> Response:
        page = STATIC_DIR / "dashboard.html"
        return unless_not_modified(
            request, FileResponse(page, stat_result=page.stat(), headers={"Cache-Control": "no-cache"})
        )

    @app.get("/api/v1/run")
    def run() -> dict:
        return dataclasses.asdict(run_info)

    @app.get("/api/v1/progress")
    def progress() -> dict:
        return {**dataclasses.asdict(store.progress()), "now": time.time()}

    @app.get("/api/v1/peers")
    def peers() -> dict:
        # "bans": every ban of the run by libp2p id, also those of peers whose metrics the coordinator never saw
        return {
            "peers": [dataclasses.asdict(p) for p in store.peers()],
            "bans": [dataclasses.asdict(b) for b in store.bans()],
        }

    @app.get("/api/v1/history")
    def history(since: float | None = None, limit: int = 5000) -> dict:
        return {"history": [dataclasses.asdict(h) for h in store.history(since=since, limit=max(1, min(limit, 50000)))]}

    @app.get("/api/v1/checkpoints")
    def checkpoints() -> dict:
        # "evaluation": the checkpoint's scores once evaluated in the background (GET /api/v1/evaluations), else None;
        # "exports": {form: {created, files}} of the forms built so far (GET /exports/<name>/<form>/<path>)
        evaluated = evaluation_entries(store)
        listed = []
        for m in files.list():
            try:
                exports = {form: export_entry(e) for form, e in files.exports(m.name).items()}
            except CheckpointNotFound:  # pruned since files.list()
                continue
            listed.append({**m.to_dict(), "evaluation": evaluated.get(m.name), "exports": exports})
        return {"checkpoints": listed}

    @app.get("/api/v1/checkpoints/{name}/exports/{form}")
    def export_manifest(name: str, form: str) -> dict:
        """One export's manifest; 404 with a one-line ``detail`` (naming the forms built) when there is none yet."""
        try:
            return files.export_manifest(name, form).to_dict()
        except CheckpointNotFound as e:
            raise HTTPException(status_code=404, detail=str(e)) from None

    @app.get("/api/v1/evaluations")
    def evaluations() -> dict:
        """Every evaluated checkpoint, pruned ones too (the scores are the run's quality over its steps), oldest
        first."""
        return {"evaluations": list(evaluation_entries(store).values())}

    @app.get("/api/v1/checkpoints/{name}/card", response_class=PlainTextResponse)
    def card(name: str) -> PlainTextResponse:
        """The checkpoint's model card (markdown) with its evaluation as ``model-index`` once it has one."""
        try:
            manifest = files.manifest(name)
            text = served_card(files.root / manifest.name, run_data(run_info.config))
        except CheckpointNotFound as e:
            raise HTTPException(status_code=404, detail=str(e)) from None
        except UserError as e:  # not a model dir (a checkpoint of some other layout)
            raise HTTPException(status_code=404, detail=str(e)) from None
        return PlainTextResponse(text, media_type="text/markdown; charset=utf-8")

    @app.post("/api/v1/auth/token")
    async def auth_token(request: Request) -> JSONResponse:
        """{name, key, public_key (base64 of the OpenSSH key)} -> {token (base64), expiration_time,
        authority_public_key}; 403 with a one-line ``detail`` when refused. Refusals are counted by reason."""
        body = await request.body() if int(request.headers.get("content-length") or 0) <= MAX_AUTH_BODY else None
        status, payload, refused = token_response(authority, run_info.run_id, body)
        if refused:
            store.add_rejected({refused: 1})
        return JSONResponse(payload, status_code=status)

    dial_back = DialBack()

    @app.post("/api/v1/reachability")
    async def reachability(request: Request) -> JSONResponse:
        """{ports: [TCP port, ...]} -> {address, reachable: {port: bool}}: whether this coordinator can open a
        connection back to the caller's own address at those ports (``coordinator.reachability``); 400 with a
        one-line ``detail`` for a malformed body."""
        if int(request.headers.get("content-length") or 0) > MAX_AUTH_BODY:
            return JSONResponse({"detail": "request body too large"}, status_code=413)
        try:
            wanted = ReachabilityRequest.parse(await request.json())
        except (BadReachabilityRequest, ValueError) as e:
            return JSONResponse({"detail": str(e).splitlines()[0] or "invalid JSON"}, status_code=400)
        if request.client is None:
            return JSONResponse({"detail": "the caller's address is unknown"}, status_code=400)
        # a blocking dial of up to DIAL_TIMEOUT seconds: in a worker thread, never on the event loop
        return JSONResponse(await asyncio.to_thread(dial_back.check, request.client.host, wanted))

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.api_route("/checkpoints/{name}/{path:path}", methods=["GET", "HEAD"])
    def checkpoint_file(request: Request, name: str, path: str) -> Response:
        return serve_file(request, name, path)

    @app.api_route("/exports/{name}/{form}/{path:path}", methods=["GET", "HEAD"])
    def export_file(request: Request, name: str, form: str, path: str) -> Response:
        """A file of a checkpoint's export, as checkpoint files are served; 404 for a form not built (yet)."""
        return serve_file(request, name, path, form)

    def serve_file(request: Request, name: str, path: str, form: str = "") -> Response:
        try:
            full, entry = files.resolve(name, path, form)
        except UnsafePath as e:
            raise HTTPException(status_code=400, detail=str(e)) from None
        except CheckpointNotFound as e:
            raise HTTPException(status_code=404, detail=str(e)) from None
        headers = {"Cache-Control": "no-cache"}
        if entry is not None:
            headers["ETag"] = f'"{entry.sha256}"'
            # RFC 9530: the digest of the whole file, also on 206 responses, so a client can check what it assembled.
            headers["Repr-Digest"] = f"sha-256=:{base64.b64encode(bytes.fromhex(entry.sha256)).decode()}:"
        try:
            stat = os.stat(full)
        except FileNotFoundError:  # pruned since resolve()
            raise HTTPException(status_code=404, detail=f"{path} of checkpoint {name} is gone") from None
        # The manifest's sha256 ETag is set above; manifest.json itself gets Starlette's (mtime and size) one.
        response = _CountingFileResponse(
            full,
            filename=Path(path).name,
            media_type="application/octet-stream",
            headers=headers,
            stat_result=stat,
            metrics=metrics,
        )
        return unless_not_modified(request, response)

    @app.exception_handler(CheckpointNotFound)
    async def not_found(request: Request, exc: CheckpointNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    return app


@dataclass
class HttpServer:
    """A uvicorn server running in a background thread; ``port`` is the bound one (port 0 picks a free one)."""

    port: int
    _server: uvicorn.Server
    _thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)


def start_http_server(app: FastAPI, host: str = "0.0.0.0", port: int = 8080) -> HttpServer:
    """Binds ``host:port`` now (so a busy port fails here, with a clear error) and serves in a daemon thread."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot bind the HTTP server to {host}:{port}: {e.strerror}") from None
    sock.listen(128)
    bound = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5)
    )
    thread = threading.Thread(
        target=lambda: asyncio.run(server.serve(sockets=[sock])), name=f"http-{bound}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not server.started:
        raise RuntimeError(f"the HTTP server on {host}:{bound} did not start")
    logger.info("HTTP server on %s:%d", host, bound)
    return HttpServer(port=bound, _server=server, _thread=thread)
