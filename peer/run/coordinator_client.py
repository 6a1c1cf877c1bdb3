"""The client side of the coordinator's JSON API (``GET /api/v1/...``), shared by every program that reads it:
``peer join --coordinator``, ``coordinator status``, ``coordinator download --from``.

Each answer is checked here, in one place, against what a warmswarm coordinator sends (the ``*Answer`` models, one
per path). A URL that answers but is not a coordinator — another service's JSON, an HTML page, a 404, fields of the
wrong type — is then one line, "URL is not a warmswarm coordinator (...)", instead of a ``KeyError`` somewhere
further on. Only the fields the clients read are declared; extra fields are ignored, so a newer coordinator that
adds some still passes.
"""

from __future__ import annotations

from typing import ClassVar, TypeVar
from urllib.parse import urlparse

import httpx
import pydantic

from peer.errors import UserError


class NotACoordinator(UserError):
    """The URL answered, but not as a warmswarm coordinator does."""


class CoordinatorUnavailable(UserError):
    """The coordinator could not be reached or failed to answer (running the command again later may help)."""


class _Answer(pydantic.BaseModel):
    PATH: ClassVar[str]


class RunAnswer(_Answer):
    """``GET /api/v1/run``: what a joining peer needs."""

    PATH: ClassVar[str] = "/api/v1/run"
    run_id: str
    config: dict
    initial_peers: list[str] = []
    join_command: str = ""
    bans: dict | None = None
    auth: dict | None = None


class ProgressAnswer(_Answer):
    """``GET /api/v1/progress``: the run at a glance. Unknown values (no live peer, no step rate yet) are None."""

    PATH: ClassVar[str] = "/api/v1/progress"
    run_id: str
    global_step: int
    alive_peers: int
    samples_per_second: float | None = None
    loss: float | None = None
    samples_total: int | None = None
    total_steps: int | None = None
    eta_seconds: float | None = None
    last_checkpoint_step: int | None = None
    updated: float | None = None


class PeerEntry(pydantic.BaseModel):
    name: str
    short_id: str
    samples: int
    seconds_online: float | None = None
    step: int | None = None
    loss: float | None = None
    alive: bool
    banned: bool = False


class PeersAnswer(_Answer):
    """``GET /api/v1/peers``: every volunteer seen in the run."""

    PATH: ClassVar[str] = "/api/v1/peers"
    peers: list[PeerEntry]


class FileEntry(pydantic.BaseModel):
    path: str
    size: int
    sha256: str


class ScoreEntry(pydantic.BaseModel):
    role: str
    task: str
    metric: str
    mean: float | None = None
    sd: float | None = None
    headline: bool = False


class EvaluationEntry(pydantic.BaseModel):
    """A checkpoint's background evaluation: ``done`` with its scores, or failed ``attempts`` times so far."""

    done: bool
    attempts: int = 0
    error: str = ""
    scores: list[ScoreEntry] = []


class ExportEntry(pydantic.BaseModel):
    """One export of a checkpoint (a form such as int8), with its own files."""

    created: float
    files: list[FileEntry]


class CheckpointEntry(pydantic.BaseModel):
    name: str
    step: int
    stage: int = 0  # the growth stage of the model it holds (0 from a coordinator before stages)
    created: float
    files: list[FileEntry]
    evaluation: EvaluationEntry | None = None  # None: not evaluated yet, or a coordinator that does not evaluate
    exports: dict[str, ExportEntry] = {}  # by form; empty: none built yet, or a coordinator that builds none


class CheckpointsAnswer(_Answer):
    """``GET /api/v1/checkpoints``: the verified checkpoints, oldest first."""

    PATH: ClassVar[str] = "/api/v1/checkpoints"
    checkpoints: list[CheckpointEntry]


A = TypeVar("A", bound=_Answer)


def coordinator_base_url(url: str, flag: str = "the coordinator URL") -> str:
    """``url`` without a trailing slash; UserError unless it is ``http(s)://HOST[:PORT][/prefix]``."""
    try:
        parsed = urlparse(url)
        parsed.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UserError(f"{flag} must look like http://HOST:PORT, got {url!r}")
    return url.rstrip("/")


def get_answer(url: str, answer: type[A], timeout: float = 30.0, client: httpx.Client | None = None) -> A:
    """``GET <url><answer.PATH>``, checked against ``answer``. Raises NotACoordinator when the server answers
    something else, CoordinatorUnavailable when it cannot be reached or fails (HTTP 5xx). ``client`` lets a caller
    that reads several paths keep one connection."""
    base = coordinator_base_url(url)
    target = f"{base}{answer.PATH}"
    try:
        if client is None:
            response = httpx.get(target, timeout=timeout, follow_redirects=True)
        else:
            response = client.get(target, timeout=timeout, follow_redirects=True)
    except httpx.HTTPError as e:
        raise CoordinatorUnavailable(f"cannot reach the coordinator at {base}: {e or type(e).__name__}") from None

    def refuse(what: str) -> NotACoordinator:
        return NotACoordinator(f"{base} is not a warmswarm coordinator (GET {answer.PATH} answered {what})")

    if response.status_code >= 500:
        raise CoordinatorUnavailable(
            f"the coordinator at {base} failed to answer GET {answer.PATH} (HTTP {response.status_code}); "
            "try again later"
        )
    if not response.is_success:
        raise refuse(f"HTTP {response.status_code}")
    try:
        body = response.json()
    except ValueError:
        kind = response.headers.get("content-type", "").split(";")[0] or "no content type"
        raise refuse(f"{kind}, not JSON") from None
    try:
        return answer.model_validate(body)
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the answer"
        if first["type"] == "missing":
            raise refuse(f"JSON without {where!r}") from None
        raise refuse(f"JSON where {where!r} is not as expected: {first['msg']}") from None
