import os
import signal
import time

from peer.swarm.shutdown import StopSignal


def _fork_sleeper() -> int:
    pid = os.fork()
    if pid == 0:  # child: inherits the parent's handlers, like hivemind's forked DHT / averager processes
        try:
            time.sleep(30)
        finally:
            os._exit(0)
    return pid


def test_signals_stop_the_parent_but_a_forked_child_obeys_its_sender():
    stop = StopSignal().install()
    try:
        child = _fork_sleeper()
        time.sleep(0.3)
        os.kill(child, signal.SIGINT)  # Ctrl-C reaches the whole group: the child leaves it to its parent
        time.sleep(0.3)
        assert os.waitpid(child, os.WNOHANG) == (0, 0), "the child died of SIGINT"
        os.kill(child, signal.SIGTERM)  # the parent's "terminate" must terminate the child
        _, status = os.waitpid(child, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
        assert not stop.is_set(), "a signal to the child must not stop the parent"
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(2), "SIGTERM to the peer itself asks its loop to stop"
    finally:
        stop.restore()


def test_reassert_restores_the_handler_that_hivemind_replaced_with_ignore():
    stop = StopSignal().install()
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # what DecentralizedAverager.run_in_background does
        stop.reassert()
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.wait(2)
    finally:
        stop.restore()
