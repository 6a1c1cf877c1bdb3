"""A home network behind NAT, built from network namespaces: what a volunteer's machine looks like from the swarm.

    root namespace (coordinator, the "internet")  UP_IP  <-veth->  router netns  <-veth->  home netns (peer)
                                                          eth0: ROUTER_IP   lan0: GATEWAY   eth0: HOME_IP

The router masquerades what the home network sends out (iptables, as a home router does), and the root namespace has
no route to the home subnet: nothing can dial in, exactly as behind a real NAT. Needs root, ``ip`` and ``iptables``.
Names and subnets carry this process's id, so two test runs on one machine do not collide, and everything is removed
on exit (deleting a namespace removes its veth ends, its iptables rules and its routes).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest


def sh(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")


@dataclass(frozen=True)
class NatNetwork:
    router: str  # namespace names
    home: str
    up_ip: str  # the root namespace's address on the router's uplink: where the coordinator listens
    router_ip: str  # the router's uplink address: what the coordinator sees a home peer's connections come from
    home_ip: str

    def run_in_home(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the home namespace."""
        return ["ip", "netns", "exec", self.home, *argv]


@contextmanager
def nat_network() -> Iterator[NatNetwork]:
    tag = f"{os.getpid() % 100000}"
    x = os.getpid() % 200 + 20
    net = NatNetwork(
        router=f"wsn{tag}r", home=f"wsn{tag}h", up_ip=f"10.251.{x}.1", router_ip=f"10.251.{x}.2",
        home_ip=f"10.252.{x}.2",
    )  # fmt: skip
    up, lan = f"wsn{tag}u", f"wsn{tag}l"
    probe = subprocess.run(["ip", "netns", "add", net.router], capture_output=True, text=True)
    if probe.returncode:  # a container without CAP_SYS_ADMIN / CAP_NET_ADMIN: no namespaces to build a NAT from
        pytest.skip(f"cannot create a network namespace here: {probe.stderr.strip()}")
    try:
        sh("ip", "netns", "add", net.home)
        # uplink: root <-> router
        sh("ip", "link", "add", up, "type", "veth", "peer", "name", f"{up}p")
        sh("ip", "link", "set", f"{up}p", "netns", net.router)
        sh("ip", "addr", "add", f"{net.up_ip}/24", "dev", up)
        sh("ip", "link", "set", up, "up")
        in_router = ("ip", "netns", "exec", net.router)
        sh(*in_router, "ip", "link", "set", f"{up}p", "name", "eth0")
        sh(*in_router, "ip", "addr", "add", f"{net.router_ip}/24", "dev", "eth0")
        sh(*in_router, "ip", "link", "set", "eth0", "up")
        sh(*in_router, "ip", "link", "set", "lo", "up")
        # home LAN: router <-> home
        sh("ip", "link", "add", lan, "type", "veth", "peer", "name", f"{lan}p")
        sh("ip", "link", "set", lan, "netns", net.router)
        sh("ip", "link", "set", f"{lan}p", "netns", net.home)
        sh(*in_router, "ip", "link", "set", lan, "name", "lan0")
        sh(*in_router, "ip", "addr", "add", f"10.252.{x}.1/24", "dev", "lan0")
        sh(*in_router, "ip", "link", "set", "lan0", "up")
        sh(*in_router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh(*in_router, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "eth0", "-j", "MASQUERADE")
        in_home = ("ip", "netns", "exec", net.home)
        sh(*in_home, "ip", "link", "set", f"{lan}p", "name", "eth0")
        sh(*in_home, "ip", "addr", "add", f"{net.home_ip}/24", "dev", "eth0")
        sh(*in_home, "ip", "link", "set", "eth0", "up")
        sh(*in_home, "ip", "link", "set", "lo", "up")
        sh(*in_home, "ip", "route", "add", "default", "via", f"10.252.{x}.1")
        yield net
    finally:
        for name in (net.home, net.router):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "link", "del", up], capture_output=True)
