"""The emulated network: a hub namespace with a bridge, one namespace per peer joined to it by a veth pair, each end
shaped by ``tc tbf``. Only names ``<prefix>-*`` (``wsb`` for ``bench/swarm.py``, ``wsj`` for ``bench/joiners.py``, so
the two can run side by side) are created; ``teardown`` removes them."""

from __future__ import annotations

import subprocess

PREFIX = "wsb"
SUBNET = "10.77.0"


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def netns(i: int, prefix: str = PREFIX) -> str:
    return f"{prefix}-p{i}"


def build_network(n: int, rate: str, prefix: str = PREFIX) -> None:
    """Hub namespace with a bridge; peer i gets veth eth0 = SUBNET.(i+1), shaped both ways by tbf."""
    hub = f"{prefix}-hub"
    sh("ip", "netns", "add", hub)
    sh("ip", "netns", "exec", hub, "ip", "link", "add", "br0", "type", "bridge")
    sh("ip", "netns", "exec", hub, "ip", "link", "set", "br0", "up")
    for i in range(n):
        ns = netns(i, prefix)
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", f"{prefix}{i}a", "type", "veth", "peer", "name", f"{prefix}{i}b")
        sh("ip", "link", "set", f"{prefix}{i}a", "netns", ns)
        sh("ip", "link", "set", f"{prefix}{i}b", "netns", hub)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", f"{prefix}{i}a", "name", "eth0")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", "eth0")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", hub, "ip", "link", "set", f"{prefix}{i}b", "master", "br0")
        sh("ip", "netns", "exec", hub, "ip", "link", "set", f"{prefix}{i}b", "up")
        for where, dev in ((ns, "eth0"), (hub, f"{prefix}{i}b")):
            sh(
                "ip",
                "netns",
                "exec",
                where,
                "tc",
                "qdisc",
                "add",
                "dev",
                dev,
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                "256kb",
                "latency",
                "50ms",
            )


def teardown(n: int, prefix: str = PREFIX) -> None:
    for name in [netns(i, prefix) for i in range(n)] + [f"{prefix}-hub"]:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
