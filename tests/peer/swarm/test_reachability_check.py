"""The peer's start-up question to the coordinator: can the swarm connect to me? (``peer.swarm.reachability``)"""

from __future__ import annotations

import socket
import threading

import pytest
import uvicorn
from fastapi import FastAPI, Request

from peer.errors import UserError
from peer.swarm.reachability import check_reachable, listening_ports


def test_listening_ports_are_the_ipv4_tcp_ones_without_relays():
    maddrs = [
        "/ip4/127.0.0.1/tcp/4001/p2p/QmA",
        "/ip4/10.0.0.5/tcp/4001/p2p/QmA",
        "/ip4/10.0.0.5/udp/4001/quic/p2p/QmA",
        "/ip6/::1/tcp/4003/p2p/QmA",
        "/ip4/203.0.113.9/tcp/4100/p2p/QmRelay/p2p-circuit/p2p/QmA",
        "/ip4/10.0.0.5/tcp/4002",
    ]
    assert listening_ports(maddrs) == [4001, 4002]


class FakeCoordinator:
    """A real HTTP server answering the reachability route as told (what a coordinator behind NAT-less loopback
    cannot be made to say)."""

    def __init__(self, status: int, answer: dict | None):
        app = FastAPI()

        @app.post("/api/v1/reachability")
        async def route(request: Request):
            from fastapi.responses import JSONResponse

            self.asked = (await request.json())["ports"]
            return JSONResponse(answer or {"detail": "nope"}, status_code=status)

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            threading.Event().wait(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


MADDRS = ["/ip4/10.78.0.2/tcp/41234/p2p/QmA"]


def test_no_reachable_port_is_one_line_advice_naming_client_mode():
    with FakeCoordinator(200, {"address": "10.77.0.2", "reachable": {"41234": False}}) as url:
        with pytest.raises(UserError) as err:
            check_reachable(url, MADDRS)
    message = str(err.value)
    assert "\n" not in message and "--client_mode" in message and "10.77.0.2" in message and "41234" in message


def test_a_reachable_port_goes_on():
    with FakeCoordinator(200, {"address": "10.77.0.2", "reachable": {"41234": True}}) as url:
        check_reachable(url, MADDRS)


@pytest.mark.parametrize("status,answer", [(404, None), (200, {"unexpected": 1})])
def test_a_coordinator_that_cannot_answer_is_no_reason_to_stop(status, answer, caplog):
    with FakeCoordinator(status, answer) as url:
        check_reachable(url, MADDRS)
    assert "could not check whether the swarm can reach this peer" in caplog.text
