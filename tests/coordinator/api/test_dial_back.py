"""``POST /api/v1/reachability``: the coordinator dials back the caller's own address, and only that."""

from __future__ import annotations

import socket

import httpx
import pytest

from coordinator.reachability import MAX_PORTS, BadReachabilityRequest, DialBack, ReachabilityRequest


def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_listening_port_is_reachable_and_a_closed_one_is_not(coordinator):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        open_port, shut = server.getsockname()[1], closed_port()
        answer = httpx.post(f"{coordinator.url}/api/v1/reachability", json={"ports": [open_port, shut]}, timeout=30)
    assert answer.status_code == 200
    assert answer.json() == {"address": "127.0.0.1", "reachable": {str(open_port): True, str(shut): False}}


@pytest.mark.parametrize(
    "body",
    [[], {"ports": "80"}, {"ports": []}, {"ports": [0]}, {"ports": [70000]}, {"ports": [True]},
     {"ports": list(range(1000, 1001 + MAX_PORTS))}],  # fmt: skip
)
def test_a_malformed_request_gets_400_with_one_line(coordinator, body):
    answer = httpx.post(f"{coordinator.url}/api/v1/reachability", json=body, timeout=30)
    assert answer.status_code == 400
    assert "\n" not in answer.json()["detail"] and answer.json()["detail"]
    with pytest.raises(BadReachabilityRequest):
        ReachabilityRequest.parse(body)


def test_not_json_gets_400(coordinator):
    answer = httpx.post(f"{coordinator.url}/api/v1/reachability", content=b"{nope", timeout=30)
    assert answer.status_code == 400


def test_dial_back_only_ever_dials_the_address_it_is_given(monkeypatch):
    """The coordinator is no port scanner: the HTTP route passes the caller's own address, and the check dials
    that address and nothing else."""
    dialled = []
    monkeypatch.setattr(
        "coordinator.reachability.dial", lambda address, port, timeout: dialled.append((address, port)) or False
    )
    result = DialBack().check("192.0.2.7", ReachabilityRequest.parse({"ports": [4001, 4001, 4002]}))
    assert result == {"address": "192.0.2.7", "reachable": {"4001": False, "4002": False}}
    assert sorted(dialled) == [("192.0.2.7", 4001), ("192.0.2.7", 4002)]
