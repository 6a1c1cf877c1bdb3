"""One log format for every process of a run, ours and hivemind's, and no traceback for what a swarm meets every day.

Why: an operator reads a peer's or a coordinator's logs in journald or in the demo's combined output. hivemind puts
its own handler and format on its loggers (``hivemind.utils.logging``: a coloured ``Dec 06 17:20:01.123 [WARN]``,
another clock, no logger name) and logs network failures that happen in normal operation (a round that found no
group, an all-reduce that lost a peer that left, a state download that timed out, a task cancelled at shutdown) with
a full traceback; a user reads those as crashes. Here:

- every record goes through one root handler: ``2026-12-06 17:20:01 INFO peer.swarm.loop: ...``; hivemind's loggers
  propagate to it (``use_hivemind_log_handler("nowhere")``) and keep their own level (``HIVEMIND_LOGLEVEL``, default
  INFO, as hivemind itself reads it), so ``--verbose`` does not turn on hivemind's per-message debug output;
- :class:`ExpectedFailureFilter` turns a hivemind record whose exception is one of :data:`EXPECTED_FAILURES` into one
  WARNING line without the traceback, unless ``--verbose``. Any other exception keeps its traceback;
- ``httpx``/``httpcore`` request lines (one INFO line per HTTP request) and gRPC core's informational lines (its own
  stderr format) only with ``--verbose``;
- progress bars only on a terminal (:func:`progress_on`); elsewhere the callers log plain lines, and the bars of
  transformers and huggingface_hub are turned off.

The forked children (hivemind's DHT process and averagers) inherit this set-up with the process image.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import TextIO

import wrapt

LINE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
HIVEMIND_LOGGING_MODULE = "hivemind.utils.logging"
HIVEMIND_LEVEL_ENV = "HIVEMIND_LOGLEVEL"  # hivemind's own variable (hivemind/utils/logging.py)
GRPC_VERBOSITY_ENV = "GRPC_VERBOSITY"  # gRPC core's own stderr lines ("I1206 17:36:09.832941 ... fork_posix.cc")
HF_PROGRESS_ENV = "HF_HUB_DISABLE_PROGRESS_BARS"  # read by huggingface_hub, and through it by transformers
QUIET_LIBRARIES = ("httpx", "httpcore")  # INFO = one line per request: WARNING unless --verbose
ROUND_LOST = "all-reduce failed: a peer of the group left or was too slow"


@dataclass(frozen=True)
class ExpectedFailure:
    """A failure hivemind logs with a traceback although a healthy swarm meets it: the record's exception is an
    instance of a class named ``exception`` (matched over its MRO, so subclasses count and hivemind need not be
    imported); when ``text`` is given, that text occurs in the exception's message or the record's message; when
    ``frame`` is given, a function of that name is on the exception's traceback."""

    what: str  # the start of the one-line warning: what happened, in the operator's words
    exception: str
    text: str = ""
    frame: str = ""

    def matches(self, exc: BaseException, message: str) -> bool:
        if self.exception not in {cls.__name__ for cls in type(exc).__mro__}:
            return False
        if self.text and self.text not in str(exc) and self.text not in message:
            return False
        return not self.frame or self.frame in _traceback_functions(exc)


EXPECTED_FAILURES: tuple[ExpectedFailure, ...] = (  # the first that matches names the line
    # averager.py _load_state_from_peers / optimizer.py load_state_from_peers: the donor was slow or left
    ExpectedFailure("state download timed out", "TimeoutError", "Failed to download state"),
    ExpectedFailure("state download timed out", "TimeoutError", "Failed to load state"),
    # averager.py _step: matchmaking ended with nobody else in the round (a peer alone, or peers out of step)
    ExpectedFailure("averaging round found no group", "AllreduceException", "could not find a group"),
    # allreduce.py: a member of the group left or failed mid-round and told the others so, or stopped answering in
    # time (averager.py _aggregate_with_group wraps that as "Unable to run All-Reduce: <the inner error>")
    ExpectedFailure(ROUND_LOST, "AllreduceException", "INTERNAL_ERROR"),
    ExpectedFailure(ROUND_LOST, "AllreduceException", "CANCELLED"),
    ExpectedFailure(ROUND_LOST, "AllreduceException", "terminated during"),
    ExpectedFailure(ROUND_LOST, "MatchmakingException", "Unable to run All-Reduce"),
    # matchmaking.py: the would-be leader went away between the invitation and the group
    ExpectedFailure("matchmaking failed: a peer left", "MatchmakingException"),
    # any hivemind coroutine cancelled while its process shuts down (or a round's deadline passed)
    ExpectedFailure("task cancelled (shutdown or deadline)", "CancelledError"),
    # p2p_daemon_bindings: asyncio's "Unhandled exception in client_connected_cb" for the p2p daemon's connection
    # whose handler task was dropped just before (see EXPECTED_MESSAGES)
    ExpectedFailure("p2p handler of a dropped stream", "RuntimeError", "cannot reuse already awaited coroutine"),
    # averager.py _step sets the result of a round its caller has just cancelled (a pre-scheduled round given up): the
    # task ends with this error, which asyncio logs as "Task exception was never retrieved"
    ExpectedFailure("round already cancelled by its caller", "InvalidStateError", "CANCELLED"),
    # dht.py / averager.py _run: a request (its MPFuture carries a pipe, handed over by multiprocessing's resource
    # sharer) from a main process that exited before the DHT or averager process read it
    ExpectedFailure("request from a process that has exited (shutdown)", "OSError", frame="rebuild_connection"),
    # p2p_daemon_bindings: the p2p daemon could not dial a peer (e.g. a state download from a peer that just left)
    ExpectedFailure("peer unreachable (it left, or its network failed)", "ControlFailure", "failed to dial"),
    # p2p_daemon.py _write_to_stream, allreduce.py _communicate_with_peer: writing to or reading from a peer that has
    # died (BrokenPipeError, ConnectionResetError "Connection lost"), often as an unretrieved task exception
    ExpectedFailure("connection to a peer lost (it left, or its network failed)", "ConnectionError"),
)

# multiprocessing's resource sharer (a thread of the process that hands a pipe to another, e.g. a hivemind averager
# answering the peer's main process) reports through ``sys.excepthook``, not logging: when the main process was
# killed mid-handover (the demo's SIGKILLed peer) that was a traceback on the peer's output. ``configure_logging``
# routes uncaught exceptions to this logger, in scope of the filter.
UNCAUGHT_LOGGER = "peer.uncaught"
UNCAUGHT_FAILURES: tuple[ExpectedFailure, ...] = (
    ExpectedFailure("pipe handover to a process that has exited", "ConnectionError", frame="answer_challenge"),
)


@dataclass(frozen=True)
class ExpectedMessage:
    """A record without an exception that reports an expected event in alarming words: its message starts with
    ``starts`` and the regular expression ``subject`` finds what it is about (group 1); it becomes the one line
    ``what: <subject>``."""

    what: str
    starts: str
    subject: str

    def about(self, message: str) -> str | None:
        """The subject of ``message`` if this is the event, else None."""
        found = re.search(self.subject, message) if message.startswith(self.starts) else None
        return found.group(1) if found else None


EXPECTED_MESSAGES: tuple[ExpectedMessage, ...] = (
    # asyncio's "Task was destroyed but it is pending!" for a task of hivemind's own code. Our one (the progress
    # tracker's, at every clean exit) is fixed at its cause; the ones left are hivemind 1.1.12's, mid-run, after a peer
    # died: its all-reduce gives the peer a stream of tensor parts built on amap_in_executor that nobody closes when
    # the peer is gone (the _put_items task is collected pending), and its p2p daemon client drops the handler task of
    # that peer's stream (ControlClient._handler). A library we do not patch: this message filter, for hivemind's
    # tasks only, is the last resort the issue allows; a task of ours still gets asyncio's ERROR.
    ExpectedMessage(
        "hivemind dropped an unfinished task (a round or a stream with a peer that left)",
        "Task was destroyed but it is pending!",
        r"coro=<([^()\s]+)\(\) (?:running at|done, defined at) \S*/hivemind/",
    ),
)


def _traceback_functions(exc: BaseException) -> set[str]:
    names, tb = set(), exc.__traceback__
    while tb is not None:
        names.add(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return names


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def one_line(failure: ExpectedFailure, exc: BaseException, message: str) -> str:
    """``what: message (Type: text)``, each part once (hivemind often logs the exception itself as the message),
    and the error it was raised from, if any: hivemind wraps e.g. a timeout as "Unable to run All-Reduce: "."""
    kind, text, message = type(exc).__name__, _first_line(str(exc)), _first_line(message)
    exception = f"{kind}: {text}" if text else kind
    if not message or message == text:
        line = f"{failure.what}: {exception}"
    else:
        line = f"{failure.what}: {message}" if kind in message else f"{failure.what}: {message} ({exception})"
    inner = exc.__cause__ or exc.__context__
    if inner is not None:
        inner_text = _first_line(str(inner))
        line += f" (from {type(inner).__name__}{': ' + inner_text if inner_text else ''})"
    return line


class ExpectedFailureFilter(logging.Filter):
    """On the root handler: a record from a logger under one of ``scopes`` (hivemind's, and asyncio's, which logs the
    unretrieved exceptions of hivemind's tasks) that carries an exception listed in ``failures`` becomes one WARNING
    line (what it means, the message's first line, the exception's type and first line) with no traceback, unless
    ``verbose``, where it passes unchanged. So does a record without an exception whose message is one of
    ``messages``. Records of other loggers, records with any other exception, and records without one pass unchanged:
    an unexpected error still shows its traceback."""

    def __init__(
        self,
        verbose: bool = False,
        failures: tuple[ExpectedFailure, ...] = UNCAUGHT_FAILURES + EXPECTED_FAILURES,
        scopes: tuple[str, ...] = ("hivemind", "asyncio", UNCAUGHT_LOGGER),
        messages: tuple[ExpectedMessage, ...] = EXPECTED_MESSAGES,
    ) -> None:
        super().__init__()
        self.verbose = verbose
        self.failures = failures
        self.scopes = scopes
        self.messages = messages

    def expected(self, record: logging.LogRecord) -> ExpectedFailure | None:
        """The listed failure this record reports, or None."""
        if not record.exc_info or record.exc_info[1] is None or not self.in_scope(record):
            return None
        exc, message = record.exc_info[1], record.getMessage()
        return next((f for f in self.failures if f.matches(exc, message)), None)

    def in_scope(self, record: logging.LogRecord) -> bool:
        return any(record.name == scope or record.name.startswith(scope + ".") for scope in self.scopes)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose:
            return True
        failure = self.expected(record)
        if failure is not None:
            line = f"{one_line(failure, record.exc_info[1], record.getMessage())} [--verbose shows the traceback]"
        elif not record.exc_info and self.in_scope(record):
            message = record.getMessage()
            said = next(((m, about) for m in self.messages if (about := m.about(message))), None)
            if said is None:
                return True
            line = f"{said[0].what}: {said[1]} [--verbose shows {record.name}'s report]"
        else:
            return True
        record.msg = line
        record.args = None
        record.exc_info = record.exc_text = record.stack_info = None
        record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True


@dataclass(frozen=True)
class LogSettings:
    verbose: bool = False  # DEBUG for our loggers, hivemind's expected failures with tracebacks, httpx requests
    stream: TextIO | None = None  # None: sys.stderr at the time of the call


class _RootHandler(logging.StreamHandler):
    """The handler :func:`configure_logging` installs; its type marks it, so a second call replaces it."""


def configure_logging(settings: LogSettings) -> logging.Handler | None:
    """Installs the root handler (replacing one installed by an earlier call), routes hivemind's records through it
    and sets the levels; returns the handler. As ``logging.basicConfig`` does, it leaves logging alone (returns None)
    when the root logger already has a handler of someone else's and no ``settings.stream`` is asked for: a program
    that calls a CLI's ``main`` in-process (pytest, with its capture handlers) owns the output. The libraries' bars
    are turned off without a terminal either way."""
    if not progress_on():
        hide_library_progress_bars()
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _RootHandler)]
    if settings.stream is None and len(ours) < len(root.handlers):
        return None
    for old in ours:
        root.removeHandler(old)
    handler = _RootHandler(settings.stream if settings.stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter(LINE_FORMAT, DATE_FORMAT))
    handler.addFilter(ExpectedFailureFilter(settings.verbose))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if settings.verbose else logging.INFO)
    logging.captureWarnings(True)  # Python warnings (torch's, hivemind's) as dated "WARNING py.warnings" lines too
    sys.excepthook = log_uncaught  # inherited by forked children (hivemind's averagers): see UNCAUGHT_FAILURES
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.NOTSET if settings.verbose else logging.WARNING)
    if not settings.verbose:  # read when grpc is first imported (here or in a child); a value the user set is kept
        os.environ.setdefault(GRPC_VERBOSITY_ENV, "ERROR")
    # at once if hivemind is imported, else right after its logging module is: importing hivemind here (torch with
    # it) took 0.5 -> 10 s for `coordinator status` on a loaded 2-core machine, which never uses hivemind
    wrapt.register_post_import_hook(route_hivemind_logs, HIVEMIND_LOGGING_MODULE)
    return handler


def log_uncaught(exc_type: type[BaseException], exc: BaseException, tb) -> None:
    """``sys.excepthook`` through logging, so that the expected failures of ``UNCAUGHT_FAILURES`` are one line and
    anything else keeps its traceback, in the same format as every other line. Ctrl-C keeps Python's own hook."""
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    logging.getLogger(UNCAUGHT_LOGGER).error("uncaught exception", exc_info=(exc_type, exc, tb))


def route_hivemind_logs(hivemind_logging: ModuleType) -> None:
    """hivemind's records go to the root handler, at hivemind's own level (``HIVEMIND_LOGLEVEL``, else INFO).
    hivemind also renames WARNING to ``WARN`` for every logger when ``hivemind_logging`` (its
    ``hivemind.utils.logging``) is imported; the standard name is put back so that all our lines say WARNING."""
    hivemind_logging.use_hivemind_log_handler("nowhere")
    logging.getLogger("hivemind").setLevel(os.environ.get(HIVEMIND_LEVEL_ENV, "INFO").upper())
    logging.addLevelName(logging.WARNING, "WARNING")


def hide_library_progress_bars() -> None:
    """Turns off the bars transformers and huggingface_hub draw on their own ("Loading weights", "Writing model
    shards"): through their documented variable for modules not imported yet (it is read at import, and children
    inherit it; a value the user set is kept), and their switch for modules already imported."""
    os.environ.setdefault(HF_PROGRESS_ENV, "1")
    if os.environ[HF_PROGRESS_ENV] not in ("1", "true", "TRUE", "True"):
        return
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers.utils.logging" in sys.modules:
        from transformers.utils.logging import disable_progress_bar

        disable_progress_bar()


def progress_on() -> bool:
    """Whether a progress bar or live status line may be drawn: only when both stdout and stderr are terminals.
    Why both: the bars draw on stderr, and a process whose stdout goes to a file or a pipe (journald, the demo, a
    CI log) is read later as lines, where a bar redrawn with ``\\r`` is noise; callers log plain lines instead."""
    return _isatty(sys.stdout) and _isatty(sys.stderr)


def _isatty(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False
