"""A hostile DHT node of a private run that presents a chosen access token: tampered, expired, or (the control)
valid. Its authorizer signs requests with its own key like an honest node but never checks or refreshes its token,
so a bad token really goes out on the wire and the coordinator's authorizer (``peer.swarm.authorizers``) is what
stops it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import hivemind
from hivemind.proto.auth_pb2 import AccessToken
from hivemind.utils.auth import TokenAuthorizerBase
from hivemind.utils.crypto import RSAPrivateKey

from peer.run.tokens import format_expiration, parse_expiration


class FixedTokenAuthorizer(TokenAuthorizerBase):
    """Presents ``token`` on every request and accepts every peer (an attacker does not care who answers)."""

    def __init__(self, token: AccessToken, key: RSAPrivateKey):
        super().__init__(key)
        self._token = token

    async def get_token(self) -> AccessToken:
        return self._token

    def is_token_valid(self, access_token: AccessToken) -> bool:
        return True

    def does_token_need_refreshing(self, access_token: AccessToken) -> bool:
        return False


def tampered(token: AccessToken, extra_seconds: float = 30 * 86400) -> AccessToken:
    """The same token with its expiry pushed back: the authority's signature no longer covers it."""
    forged = AccessToken()
    forged.CopyFrom(token)
    forged.expiration_time = format_expiration(parse_expiration(token.expiration_time) + extra_seconds)
    return forged


@dataclass
class JoinAttempt:
    joined: bool
    error: str


def try_join(initial_peers: list[str], token: AccessToken, key: RSAPrivateKey, timeout: float = 120.0) -> JoinAttempt:
    """Starts a DHT node with ``token`` bootstrapping from ``initial_peers``; whether it got in (it is shut down)."""
    try:
        dht = hivemind.DHT(
            initial_peers=initial_peers,
            host_maddrs=["/ip4/127.0.0.1/tcp/0"],
            authorizer=FixedTokenAuthorizer(token, key),
            startup_timeout=timeout,
            start=True,
        )
    except Exception as e:  # hivemind re-raises the node's bootstrap failure in the parent
        return JoinAttempt(False, str(e).splitlines()[0][:120] if str(e) else type(e).__name__)
    try:
        # a node "in" the run can read the coordinator's config record through the swarm
        return JoinAttempt(bool(dht.get_visible_maddrs()) and _can_reach(dht, initial_peers), "")
    finally:
        dht.shutdown()


async def _ping(_dht, node, *, peer: str) -> bool:
    from hivemind.p2p import PeerID

    return bool(await node.protocol.call_ping(PeerID.from_base58(peer)))


def _can_reach(dht: hivemind.DHT, initial_peers: list[str]) -> bool:
    """Whether the coordinator answers a DHT ping from this node (it refuses requests with a bad token)."""
    return bool(dht.run_coroutine(partial(_ping, peer=initial_peers[0].rsplit("/p2p/", 1)[1])))
