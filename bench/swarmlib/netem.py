"""The emulated network: a hub namespace with a bridge, one namespace per peer joined to it by a veth pair, each end
shaped by ``tc tbf``. Only names ``wsb-*`` are created; ``teardown`` removes them."""

from __future__ import annotations

import subprocess

HUB = "wsb-hub"
SUBNET = "10.77.0"


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def netns(i: int) -> str:
    return f"wsb-p{i}"


def build_network(n: int, rate: str) -> None:
    """Hub namespace with a bridge; peer i gets veth eth0 = SUBNET.(i+1), shaped both ways by tbf."""
    sh("ip", "netns", "add", HUB)
    sh("ip", "netns", "exec", HUB, "ip", "link", "add", "br0", "type", "bridge")
    sh("ip", "netns", "exec", HUB, "ip", "link", "set", "br0", "up")
    for i in range(n):
        ns = netns(i)
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", f"wsb{i}a", "type", "veth", "peer", "name", f"wsb{i}b")
        sh("ip", "link", "set", f"wsb{i}a", "netns", ns)
        sh("ip", "link", "set", f"wsb{i}b", "netns", HUB)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", f"wsb{i}a", "name", "eth0")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", "eth0")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", HUB, "ip", "link", "set", f"wsb{i}b", "master", "br0")
        sh("ip", "netns", "exec", HUB, "ip", "link", "set", f"wsb{i}b", "up")
        for where, dev in ((ns, "eth0"), (HUB, f"wsb{i}b")):
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


def teardown(n: int) -> None:
    for name in [netns(i) for i in range(n)] + [HUB]:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
