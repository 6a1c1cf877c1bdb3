"""peer.logs: one dated format for our records and hivemind's, and hivemind's expected network failures as one
WARNING line (their traceback only with --verbose), from real exceptions raised and logged through hivemind's own
loggers."""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import multiprocessing
import os
import re
import subprocess
import sys
from multiprocessing import resource_sharer
from multiprocessing.reduction import ForkingPickler

import pytest
from hivemind.averaging.matchmaking import MatchmakingException
from hivemind.averaging.partition import AllreduceException
from hivemind.p2p.p2p_daemon_bindings.utils import ControlFailure
from hivemind.utils.asyncio import amap_in_executor, as_aiter
from hivemind.utils.logging import get_logger, use_hivemind_log_handler
from hivemind.utils.mpfuture import MPFuture

from peer.logs import LogSettings, configure_logging, progress_on

DATED = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


@pytest.fixture
def logs():
    """``configure(verbose)`` sets logging up as run_cli does, into a buffer, and returns the buffer; the root
    logger, hivemind's handler mode, the libraries' levels, warnings capture and WARNING's name are put back
    afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLevelName(logging.WARNING))
    names = ("hivemind", "httpx", "httpcore")
    levels = {name: logging.getLogger(name).level for name in names}

    def configure(verbose: bool) -> io.StringIO:
        stream = io.StringIO()
        configure_logging(LogSettings(verbose=verbose, stream=stream))
        return stream

    hook = sys.excepthook
    yield configure
    sys.excepthook = hook
    root.handlers[:] = saved[0]
    logging.captureWarnings(False)
    root.setLevel(saved[1])
    use_hivemind_log_handler("in_hivemind")
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    logging.addLevelName(logging.WARNING, saved[2])


def log_raised(logger: logging.Logger, exc: BaseException, message: str | None = None) -> None:
    """Raises ``exc`` and logs it the way hivemind does (``logger.exception(e)`` or with a message)."""
    try:
        raise exc
    except BaseException as e:
        logger.exception(message if message is not None else e)


def test_expected_failure_is_one_warning_line_and_verbose_keeps_the_traceback(logs):
    averager = get_logger("hivemind.averaging.averager")
    out = logs(verbose=False)
    log_raised(averager, AllreduceException("Averaging step failed: could not find a group"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, out.getvalue()
    assert DATED.match(lines[0]) and " WARNING hivemind.averaging.averager: " in lines[0]
    assert "averaging round found no group" in lines[0] and "AllreduceException" in lines[0]

    out = logs(verbose=True)
    log_raised(averager, AllreduceException("Averaging step failed: could not find a group"))
    text = out.getvalue()
    assert DATED.match(text) and " ERROR hivemind.averaging.averager: " in text.splitlines()[0]
    assert "Traceback (most recent call last)" in text and "AllreduceException: Averaging step failed" in text


@pytest.mark.parametrize(
    ("logger_name", "exc", "message", "said"),
    [
        ("hivemind.averaging.averager", TimeoutError(), "Failed to download state from QmX - TimeoutError()",
         "state download timed out"),
        ("hivemind.averaging.allreduce", AllreduceException("QmY sent INTERNAL_ERROR"), None,
         "all-reduce failed: a peer of the group left or was too slow"),
        ("hivemind.optim.state_averager", asyncio.CancelledError(), None, "task cancelled"),
        ("hivemind.averaging.averager", ControlFailure("Connect failed. msg=failed to dial: QmZ: all dials failed"),
         "Failed to download state from QmZ - ControlFailure('Connect failed. msg=failed to dial')",
         "peer unreachable (it left, or its network failed)"),
    ],
)
def test_each_listed_failure_is_one_line(logs, logger_name, exc, message, said):
    out = logs(verbose=False)
    log_raised(get_logger(logger_name), exc, message)
    (line,) = out.getvalue().splitlines()
    assert DATED.match(line) and f" WARNING {logger_name}: {said}" in line and type(exc).__name__ in line


def test_a_wrapped_failure_names_the_error_it_came_from(logs):
    """hivemind's averager wraps a round's inner error (here a timeout, whose text is empty) as "Unable to run
    All-Reduce: <text>"; the line names the inner error's type so that it does not end in a bare colon."""
    out = logs(verbose=False)
    try:
        try:
            raise TimeoutError()
        except TimeoutError as inner:
            raise MatchmakingException(f"Unable to run All-Reduce: {inner}")  # noqa: B904 (as hivemind does)
    except MatchmakingException as e:
        get_logger("hivemind.averaging.averager").exception(e)
    (line,) = out.getvalue().splitlines()
    assert line.endswith(
        " WARNING hivemind.averaging.averager: all-reduce failed: a peer of the group left or was too slow: "
        "MatchmakingException: Unable to run All-Reduce: (from TimeoutError) [--verbose shows the traceback]"
    ), line


def test_a_pipe_from_a_process_that_exited_is_one_line(logs):
    """What a DHT process logs when the main process sent a request (its MPFuture's pipe goes through
    multiprocessing's resource sharer) and exited before it was read: made here by stopping the sharer."""
    sender, _ = multiprocessing.Pipe()
    pickled = bytes(ForkingPickler.dumps(sender))
    resource_sharer.stop(timeout=10)  # as at the sending process's exit; the next handover starts it again
    out = logs(verbose=False)
    dht_logger = get_logger("hivemind.dht.dht")
    try:
        ForkingPickler.loads(pickled)
    except OSError as e:
        dht_logger.exception(e)
    (line,) = out.getvalue().splitlines()
    assert " WARNING hivemind.dht.dht: request from a process that has exited (shutdown): " in line
    assert "FileNotFoundError" in line

    log_raised(dht_logger, FileNotFoundError(2, "No such file or directory"))  # not from a handover: a traceback
    assert "Traceback (most recent call last)" in out.getvalue()


def run_unretrieved(coroutine_function) -> None:
    """Runs a task of ``coroutine_function()`` to its end in a loop of its own and frees it with its exception never
    retrieved: asyncio itself logs the exception then, as it does for a task of hivemind's that nobody awaited."""
    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(coroutine_function())
        loop.run_until_complete(asyncio.wait([task]))
        del task
        gc.collect()
    finally:
        loop.close()


def test_a_result_for_a_cancelled_round_is_one_line(logs):
    """hivemind's averager sets the result of a step its caller has just cancelled; the task ends with
    InvalidStateError, and asyncio itself logs it ("Task exception was never retrieved") when the task is freed."""

    async def step() -> None:
        control = MPFuture()
        control.cancel()  # the caller gave the round up
        control.set_result(None)

    out = logs(verbose=False)
    run_unretrieved(step)
    (line,) = out.getvalue().splitlines()
    assert " WARNING asyncio: round already cancelled by its caller: Task exception was never retrieved" in line
    assert "InvalidStateError" in line


def test_a_dropped_round_stream_is_one_line_other_pending_tasks_are_not(logs):
    """A real pending ``amap_in_executor`` task (hivemind's stream helper, blocked on its full queue), reported
    through asyncio's own exception handler as ``Task.__del__`` reports a task collected unfinished: one WARNING
    line. Any other task reported so keeps asyncio's ERROR."""

    async def start_stream():
        stream = amap_in_executor(lambda x: x, as_aiter(*range(10)), max_prefetch=1)
        await anext(stream)
        await asyncio.sleep(0.05)
        return stream

    out = logs(verbose=False)
    loop = asyncio.new_event_loop()
    try:
        stream = loop.run_until_complete(start_stream())
        (put_items,) = [task for task in asyncio.all_tasks(loop) if not task.done()]
        other = loop.create_task(asyncio.sleep(10))
        for task in (put_items, other):
            loop.call_exception_handler({"message": "Task was destroyed but it is pending!", "task": task})
        other.cancel()

        async def finish() -> None:
            await stream.aclose()  # cancels put_items: nothing is left to be destroyed for real
            await asyncio.gather(other, return_exceptions=True)

        loop.run_until_complete(finish())
    finally:
        loop.close()
    lines = out.getvalue().splitlines()
    assert DATED.match(lines[0]) and lines[0].endswith(
        " WARNING asyncio: hivemind dropped an unfinished task (a round or a stream with a peer that left): "
        "amap_in_executor.<locals>._put_items [--verbose shows asyncio's report]"
    ), lines
    assert " ERROR asyncio: Task was destroyed but it is pending!" in lines[1] and "sleep()" in "".join(lines[2:])


def test_a_lost_connection_in_a_task_is_one_line(logs):
    """hivemind's stream writer to a peer that has died: a real BrokenPipeError (a write to a pipe whose reader is
    gone) ends a task nobody awaits, and asyncio itself logs it when the task is freed."""
    reader, writer = os.pipe()
    os.close(reader)

    async def write_to_stream() -> None:
        os.write(writer, b"part")

    out = logs(verbose=False)
    try:
        run_unretrieved(write_to_stream)
    finally:
        os.close(writer)
    (line,) = out.getvalue().splitlines()
    assert " WARNING asyncio: connection to a peer lost (it left, or its network failed): " in line
    assert "BrokenPipeError" in line


def test_unexpected_errors_keep_their_traceback(logs):
    """An exception not on the list, from hivemind; a listed type in another context (a timeout that is not a state
    download); and a listed one from our own code: all are left alone."""
    out = logs(verbose=False)
    log_raised(get_logger("hivemind.averaging.averager"), ValueError("a bug"))
    log_raised(get_logger("hivemind.dht.node"), TimeoutError("refresh"))
    log_raised(logging.getLogger("peer.swarm.loop"), AllreduceException("could not find a group"))
    text = out.getvalue()
    assert text.count("Traceback (most recent call last)") == 3
    assert "ValueError: a bug" in text and "AllreduceException: could not find a group" in text
    assert " ERROR hivemind.averaging.averager: a bug" in text and " ERROR peer.swarm.loop: " in text


def test_one_format_for_ours_and_hivemind_and_httpx_only_when_verbose(logs):
    out = logs(verbose=False)
    get_logger("hivemind.p2p.p2p_daemon").warning("from hivemind")
    logging.getLogger("peer.swarm.session").info("from us")
    logging.getLogger("httpx").info("HTTP Request: GET http://127.0.0.1/ 200 OK")
    logging.getLogger("peer.swarm.session").debug("debug of ours")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and all(DATED.match(line) for line in lines), lines
    assert lines[0].endswith("WARNING hivemind.p2p.p2p_daemon: from hivemind")  # not hivemind's "WARN"
    assert lines[1].endswith("INFO peer.swarm.session: from us")

    out = logs(verbose=True)  # a second set-up replaces the first handler: each line once
    logging.getLogger("httpx").info("HTTP Request: GET http://127.0.0.1/ 200 OK")
    logging.getLogger("peer.swarm.session").debug("debug of ours")
    get_logger("hivemind.dht.node").debug("hivemind's debug stays at HIVEMIND_LOGLEVEL")
    lines = out.getvalue().splitlines()
    assert [line.split(" ", 3)[3] for line in lines] == [
        "httpx: HTTP Request: GET http://127.0.0.1/ 200 OK",
        "peer.swarm.session: debug of ours",
    ]


ROUTED_ON_IMPORT = """
import logging, sys
from peer.logs import LogSettings, configure_logging
configure_logging(LogSettings())
assert "hivemind" not in sys.modules, "configure_logging imported hivemind"
from hivemind.utils.logging import get_logger
get_logger("hivemind.dht.node").warning("routed")
"""


def test_hivemind_is_routed_when_imported_later_not_imported_by_the_set_up():
    """A fresh process (as ``python -m coordinator status``, which never imports hivemind): the set-up does not
    import hivemind (with torch, seconds on a loaded machine), and hivemind imported afterwards is routed."""
    done = subprocess.run([sys.executable, "-c", ROUTED_ON_IMPORT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (line,) = done.stderr.splitlines()
    assert DATED.match(line) and line.endswith(" WARNING hivemind.dht.node: routed"), line


def test_no_progress_bars_without_a_terminal():
    """Under pytest stdout and stderr are captured, not terminals."""
    assert progress_on() is False


def test_an_uncaught_pipe_handover_to_an_exited_process_is_one_line_other_uncaught_errors_keep_their_traceback(logs):
    """multiprocessing's resource sharer reports through ``sys.excepthook``: the demo's SIGKILLed peer left a
    ConnectionResetError traceback from its averager process (``answer_challenge``) on the peer's output."""
    out = logs(verbose=False)

    def answer_challenge():  # the frame multiprocessing.connection raises from
        raise ConnectionResetError(104, "Connection reset by peer")

    for raiser in (answer_challenge, lambda: int("x")):
        try:
            raiser()
        except Exception:
            sys.excepthook(*sys.exc_info())
    lines = out.getvalue().splitlines()
    assert "WARNING peer.uncaught: pipe handover to a process that has exited" in lines[0]
    assert "Traceback" not in lines[0] and "ERROR peer.uncaught: uncaught exception" in lines[1]
    assert "Traceback (most recent call last)" in out.getvalue() and "ValueError" in out.getvalue()
