"""hivemind authorizers for a private run's DHT: every DHT request and response carries a valid token.

``CoordinatorTokenAuthorizer`` is hivemind's ``TokenAuthorizerBase``; every DHT request and response carries the
sender's token (``peer.run.tokens``) and is signed with the key the token names, so a node without a valid token can
neither read nor write records through us (hivemind's ``AuthRPCWrapper`` drops what ``validate_request`` refuses).
The authority's own node uses ``LocalTokenAuthorizer``. Every node's authorizer follows ``<run_id>_revoked``
(``follow_revocations``, every few seconds, inside the DHT process; ``peer.run.revocations``) and refuses tokens
bound to a revoked key. What is refused is counted by reason (``dht_auth_rejections``).

Why in ``peer.swarm``: this is what runs inside a DHT node (hivemind forks it with the node's process); the token
rules it applies are the run's contract in ``peer.run``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable

import hivemind
from hivemind.proto.auth_pb2 import AccessToken
from hivemind.utils import get_dht_time
from hivemind.utils.auth import AuthorizedRequestBase, AuthorizedResponseBase, TokenAuthorizerBase
from hivemind.utils.crypto import RSAPrivateKey, RSAPublicKey

from peer.errors import UserError
from peer.run.revocations import Revoked, record_entries, revocations_key, verified_revocations
from peer.run.tokens import (
    REPLAYED,
    REVOKED,
    WRONG_KEY,
    Credentials,
    key_fingerprint,
    request_token_async,
    token_expires_at,
    token_problem,
)

logger = logging.getLogger(__name__)


REVOCATIONS_EVERY = 5.0  # seconds between two reads of <run_id>_revoked by a node's authorizer


class RunTokenAuthorizer(TokenAuthorizerBase):
    """hivemind's token protocol with this run's token rules; counts every refusal by reason in ``rejected``.

    Lives in the DHT's own process (hivemind forks it with the node); ``dht_auth_rejections`` reads the counts out.
    Subclasses say where a fresh token comes from (``get_token``). A token is refreshed once less than a quarter of
    its lifetime (as first seen) is left, so peers renew well before the authority's expiry."""

    def __init__(
        self,
        run_id: str,
        authority: RSAPublicKey,
        local_private_key: RSAPrivateKey,
        token: AccessToken | None = None,
    ):
        super().__init__(local_private_key)
        self.run_id = run_id
        self.authority = authority
        self.rejected: Counter[str] = Counter()
        self.revoked = Revoked()  # kept current by follow_revocations
        self._follower: asyncio.Task | None = None
        self._lifetime: float | None = None
        self._last_warning: dict[str, float] = {}
        if token is not None:
            self._accept_own(token)
            self._local_access_token = token

    def _accept_own(self, token: AccessToken) -> AccessToken:
        """Checks a token this node is about to use: signed by the authority, unexpired, bound to our own key."""
        problem = token_problem(token, self.authority, self.run_id)
        if problem is None and token.public_key != self.local_public_key.to_bytes():
            problem = WRONG_KEY
        if problem is not None:
            raise UserError(f"the access token for run {self.run_id!r} is not usable here ({problem})")
        self._lifetime = token_expires_at(token) - get_dht_time()
        return token

    def token_problem(self, token: AccessToken) -> str | None:
        """``token_problem`` plus this node's view of the revocations."""
        problem = token_problem(token, self.authority, self.run_id)
        if problem is None and key_fingerprint(token.public_key) in self.revoked.keys:
            problem = REVOKED
        return problem

    def is_token_valid(self, access_token: AccessToken) -> bool:
        problem = self.token_problem(access_token)
        if problem is not None:
            self._reject(problem)
        return problem is None

    def does_token_need_refreshing(self, access_token: AccessToken) -> bool:
        left = token_expires_at(access_token) - get_dht_time()
        return left < (self._lifetime or 0.0) / 4

    async def validate_request(self, request: AuthorizedRequestBase) -> bool:
        signature = bytes(request.auth.signature)  # the base class clears it while checking
        ok = await super().validate_request(request)
        if not ok:
            self._classify_signed_failure(request, request.auth.client_access_token, signature)
        return ok

    async def validate_response(self, response: AuthorizedResponseBase, request: AuthorizedRequestBase) -> bool:
        signature = bytes(response.auth.signature)
        ok = await super().validate_response(response, request)
        if not ok:
            self._classify_signed_failure(response, response.auth.service_access_token, signature)
        return ok

    def _classify_signed_failure(self, message, token: AccessToken, signature: bytes) -> None:
        """After the base class refused a message: if its token was fine (else it is counted already), tell a
        message not signed by the token's key from a replay (nonce seen, or clocks a minute apart)."""
        if self.token_problem(token) is not None:
            return
        message.auth.signature = b""
        signed_by_holder = RSAPublicKey.from_bytes(token.public_key).verify(message.SerializeToString(), signature)
        message.auth.signature = signature
        self._reject(REPLAYED if signed_by_holder else WRONG_KEY)

    def _reject(self, reason: str) -> None:
        self.rejected[reason] += 1
        now = time.monotonic()
        if now - self._last_warning.get(reason, -1e9) >= 60.0:  # at most one line a minute per reason
            self._last_warning[reason] = now
            logger.warning(
                "refused a DHT message of run %s: %s (%d so far)", self.run_id, reason, self.rejected[reason]
            )

    def rejected_counts(self) -> dict[str, int]:
        return dict(self.rejected)

    async def follow_revocations(self, node, every: float) -> None:
        """Runs in the DHT process for the node's lifetime: re-reads ``<run_id>_revoked`` every ``every`` seconds.
        A failed read keeps the last list (revocations only ever grow while their tokens live)."""
        while True:
            try:
                found = await node.get(revocations_key(self.run_id), latest=True)
                revoked = verified_revocations(record_entries(found), self.run_id, self.authority)
                if revoked.keys - self.revoked.keys:
                    logger.warning("run %s: %d revoked keys now refused", self.run_id, len(revoked.keys))
                self.revoked = self.revoked | revoked
            except Exception as e:
                logger.debug("revocations not read: %s", e)
            await asyncio.sleep(every)


class CoordinatorTokenAuthorizer(RunTokenAuthorizer):
    """A volunteer's DHT authorizer: fresh tokens come from the coordinator's ``POST /api/v1/auth/token``.

    Start it with the token got at join time (``request_token``), so the DHT needs no HTTP call to come up; later
    refreshes run inside the DHT's event loop with a bounded timeout. If the organiser removes or bans the volunteer,
    the coordinator revokes this peer's key: every other node stops answering it within seconds (``REVOKED``), and
    its next refresh is refused."""

    def __init__(
        self,
        run_id: str,
        authority: RSAPublicKey,
        local_private_key: RSAPrivateKey,
        coordinator_url: str,
        credentials: Credentials,
        token: AccessToken | None = None,
        timeout: float = 20.0,
    ):
        super().__init__(run_id, authority, local_private_key, token)
        self.coordinator_url = coordinator_url
        self.credentials = credentials
        self.timeout = timeout

    async def get_token(self) -> AccessToken:
        token = await request_token_async(self.coordinator_url, self.credentials, self.local_public_key, self.timeout)
        return self._accept_own(token)


class LocalTokenAuthorizer(RunTokenAuthorizer):
    """An authorizer whose tokens come from a local function of its public key: the authority's own node (the
    coordinator signs its tokens itself, no HTTP round trip). It runs in the DHT's forked process, so ``issue`` must
    need nothing but memory (a key), no store or socket."""

    def __init__(
        self,
        run_id: str,
        authority: RSAPublicKey,
        local_private_key: RSAPrivateKey,
        issue: Callable[[bytes], AccessToken],
    ):
        super().__init__(run_id, authority, local_private_key)
        self._issue = issue
        self._local_access_token = self._accept_own(issue(self.local_public_key.to_bytes()))

    async def get_token(self) -> AccessToken:
        return self._accept_own(self._issue(self.local_public_key.to_bytes()))


async def _authorizer_rejections(dht: hivemind.DHT, node) -> dict[str, int]:
    """Runs inside the DHT process (``DHT.run_coroutine``): the authorizer's cumulative refusal counts."""
    authorizer = getattr(node.protocol, "authorizer", None)
    return authorizer.rejected_counts() if isinstance(authorizer, RunTokenAuthorizer) else {}


def dht_auth_rejections(dht: hivemind.DHT) -> dict[str, int]:
    """Cumulative counts, by reason, of the messages the DHT node's authorizer refused (empty for an open run)."""
    return dht.run_coroutine(_authorizer_rejections)


async def _start_following(every: float, dht: hivemind.DHT, node) -> bool:
    authorizer = getattr(node.protocol, "authorizer", None)
    if not isinstance(authorizer, RunTokenAuthorizer):
        return False
    if authorizer._follower is None or authorizer._follower.done():
        authorizer._follower = asyncio.create_task(authorizer.follow_revocations(node, every))
    return True


def follow_revocations(dht: hivemind.DHT, every: float = REVOCATIONS_EVERY) -> bool:
    """Makes the DHT node's authorizer follow ``<run_id>_revoked`` (a task in the DHT process that ends with it);
    False for a node without a run authorizer (an open run). Calling it again changes nothing."""
    return dht.run_coroutine(functools.partial(_start_following, every))


async def _authorizer_revoked(dht: hivemind.DHT, node) -> Revoked:
    authorizer = getattr(node.protocol, "authorizer", None)
    return authorizer.revoked if isinstance(authorizer, RunTokenAuthorizer) else Revoked()


def dht_revoked(dht: hivemind.DHT) -> Revoked:
    """What the DHT node's authorizer refuses as revoked now."""
    return dht.run_coroutine(_authorizer_revoked)
