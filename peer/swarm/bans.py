"""Bans: this peer's rejection ledger, its reports to the coordinator, and the gate that refuses banned peers.

Evidence flows one way, like everything else: each peer's reducers record per round which senders' contributions
were clipped or non-finite (``peer.swarm.robust``); the ``RejectionLedger`` in the training process turns
``ban_after`` such rounds in a row into a local ban; ``BanBook`` publishes the ledger under ``<run_id>_reports``
(signed, subkey = this peer's public key); the coordinator bans a peer a majority of reporters agree on and publishes
``<run_id>_bans`` signed with its own key. ``BanGate`` — asked by the averagers in their own processes — refuses a
peer found in either the coordinator's list or this peer's own published report. A local ban lasts
``RejectionLedger.ban_seconds``; the coordinator's lasts for the run.

Why the gate reads this peer's local bans back from the DHT instead of shared memory: the ledger lives in the
training process and the averagers in forked processes; the signed report is already the one copy every process can
read, at the cost of one refresh period (seconds) during which the reducer keeps clipping the peer anyway.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import hivemind
import httpx
from hivemind.dht.schema import SchemaValidator
from hivemind.p2p import PeerID
from hivemind.utils import get_dht_time

from peer.run.records import BanList, BanReport, BansSchema, bans_key, parsed_entries, reports_key
from peer.swarm.robust import INCRIMINATING, Outcome
from peer.swarm.round_evidence import RoundOutcomes

logger = logging.getLogger(__name__)

REPORT_EXPIRATION = 600.0  # seconds; refreshed every REPORT_REFRESH while the peer lives
REPORT_REFRESH = 120.0
BY_COORDINATOR = "by the coordinator"


def ban_validators(run_id: str) -> list[SchemaValidator]:
    """The schema of ``<run_id>_reports`` and ``<run_id>_bans``, for every DHT node of the run (peers and the
    coordinator) next to the metrics schema; signatures are checked by the same ``RSASignatureValidator``."""
    return [SchemaValidator(BansSchema, allow_extra_keys=True, prefix=run_id)]


@dataclass
class RejectionLedger:
    """Per peer id, rounds in a row whose contribution this peer's reducer clipped or found non-finite, counted
    separately for gradient and state rounds (an attacker corrupting only one kind would otherwise reset its streak
    in every round of the other kind). A round where the peer was accepted resets that kind's streak; ``ban_after``
    in a row bans it here for ``ban_seconds``.

    Why local bans expire: one peer's view can be wrong. In the attack bench (``ban_after`` 2) an honest
    peer was banned by one other 30 s in, for "clipped gradients in 2 rounds in a row" while rounds were partial
    (the attacker's parts being refused); a ban for the run would have split that pair for good, and over a month
    such mistakes add up. A ban a majority agrees on is the coordinator's and lasts for the run (``BanGate`` keeps
    refusing it); a lifted local ban of a real attacker is renewed after ``ban_after`` more rounds, which the
    reducer clips meanwhile."""

    ban_after: int
    ban_seconds: float = 1800.0
    clock: Callable[[], float] = time.monotonic
    streaks: dict[tuple[str, str], int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)  # rounds clipped / non-finite, all time
    banned: dict[str, str] = field(default_factory=dict)  # peer id -> reason
    banned_at: dict[str, float] = field(default_factory=dict)  # peer id -> ``clock()`` when banned
    counts: dict[str, int] = field(default_factory=dict)  # rejected contributions by outcome, all peers

    def __post_init__(self) -> None:
        if self.ban_after < 1:
            raise ValueError("ban_after must be at least 1")
        if not self.ban_seconds > 0:
            raise ValueError(f"ban_seconds must be > 0, got {self.ban_seconds}")

    def expire(self) -> list[str]:
        """Lifts the local bans older than ``ban_seconds`` (their streaks start again from 0); returns those peers."""
        now = self.clock()
        lifted = [peer for peer, since in self.banned_at.items() if now - since >= self.ban_seconds]
        for peer in lifted:
            del self.banned[peer], self.banned_at[peer]
            for key in [key for key in self.streaks if key[0] == peer]:
                del self.streaks[key]
        return lifted

    def record(self, round_: RoundOutcomes, self_id: str = "") -> list[str]:
        """Adds one round's outcomes; returns the peers banned by it."""
        newly = []
        for peer, outcome in round_.outcomes.items():
            if peer == self_id or peer in self.banned:
                continue
            key = (peer, round_.kind)
            if outcome in INCRIMINATING:
                self.counts[outcome] = self.counts.get(outcome, 0) + 1
                self.rejected[peer] = self.rejected.get(peer, 0) + 1
                self.streaks[key] = self.streaks.get(key, 0) + 1
                if self.streaks[key] >= self.ban_after:
                    self.banned[peer] = f"{outcome} {round_.kind} in {self.streaks[key]} rounds in a row"
                    self.banned_at[peer] = self.clock()
                    newly.append(peer)
            elif outcome == Outcome.ACCEPTED.value:
                self.streaks[key] = 0
        return newly

    def report(self, reporter: str) -> BanReport:
        return BanReport(
            peer_id=reporter,
            rejected=dict(self.rejected),
            banned={peer: reason[:200] for peer, reason in self.banned.items()},
            counts=dict(self.counts),
            time=time.time(),
        )


@dataclass
class BanBook:
    """The training process's side: feeds round outcomes to the ledger and keeps the signed report in the DHT
    fresh (on every change, and every ``REPORT_REFRESH`` seconds so it does not expire while the peer lives).
    Stores are fire-and-forget: the training loop never waits for the DHT here."""

    dht: hivemind.DHT
    run_id: str
    public_key: bytes  # subkey of this peer's signed records
    ledger: RejectionLedger
    last_published: float = 0.0

    @property
    def peer_id(self) -> str:
        return str(self.dht.peer_id)

    def absorb(self, rounds: Iterable[RoundOutcomes]) -> list[str]:
        lifted = self.ledger.expire()
        for peer in lifted:
            logger.warning(
                "lifting the local ban on %s after %.0f s (a ban for the run is the coordinator's)",
                peer,
                self.ledger.ban_seconds,
            )
        newly = []
        seen = False
        for round_ in rounds:
            seen = True
            newly += self.ledger.record(round_, self_id=self.peer_id)
        for peer in newly:
            logger.warning("banning %s locally: %s", peer, self.ledger.banned[peer])
        if (
            newly
            or lifted
            or (seen and self.ledger.rejected and time.monotonic() - self.last_published > REPORT_REFRESH)
        ):
            self.publish()
        return newly

    def publish(self) -> None:
        self.last_published = time.monotonic()
        self.dht.store(
            reports_key(self.run_id),
            subkey=self.public_key,
            value=self.ledger.report(self.peer_id).dict(),
            expiration_time=get_dht_time() + REPORT_EXPIRATION,
            return_future=True,
        )


def fetch_reports(dht: hivemind.DHT, run_id: str) -> dict[bytes, BanReport]:
    """Every live, valid report of the run, by the reporter's public key (subkey)."""
    return parsed_entries(dht.get(reports_key(run_id), latest=True), BanReport)


def fetch_ban_list(dht: hivemind.DHT, run_id: str, authority: bytes) -> BanList | None:
    """The coordinator's ban list: only the record under the coordinator's own (signed) subkey counts."""
    found = dht.get(bans_key(run_id), latest=True)
    if found is None or not isinstance(found.value, dict) or authority not in found.value:
        return None
    try:
        return BanList.parse_obj(found.value[authority].value)
    except Exception as e:
        logger.debug("unparsable ban list: %s", e)
        return None


class BanGate:
    """Admits a peer unless the coordinator's signed ban list or this peer's own report bans it.

    ``admits`` never blocks: it answers from a cache that a daemon thread of the *calling process* refreshes every
    ``refresh_every`` seconds (the averagers fork after this object is made, and threads do not survive a fork, so
    each process starts its own refresher on first use). ``authority`` is the coordinator's DHT subkey; None (no
    coordinator known) leaves only the local bans."""

    def __init__(
        self,
        dht: hivemind.DHT,
        run_id: str,
        own_subkey: bytes,
        authority: bytes | None,
        refresh_every: float = 5.0,
    ):
        self.dht, self.run_id = dht, run_id
        self.own_subkey, self.authority = own_subkey, authority
        self.refresh_every = refresh_every
        self._banned: dict[str, str] = {}
        self._by_coordinator: frozenset[str] = frozenset()
        self._lock = threading.Lock()
        self._refresher_pid: int | None = None

    def admits(self, peer_id: PeerID) -> bool:
        self._ensure_refresher()
        return str(peer_id) not in self._banned

    def why_not(self, peer_id: PeerID) -> str:
        reason = self._banned.get(str(peer_id))
        return "" if reason is None else f"banned ({reason})"

    def banned(self) -> dict[str, str]:
        with self._lock:
            return dict(self._banned)

    def coordinator_ban(self, peer_id: PeerID | str) -> str | None:
        """The coordinator's reason if its ban list names ``peer_id`` (a peer asks about itself), else None.
        Starts this process's refresher on first use, like ``admits``."""
        self._ensure_refresher()
        with self._lock:
            return self._banned.get(str(peer_id)) if str(peer_id) in self._by_coordinator else None

    def refresh(self) -> None:
        """One synchronous read of both records (the refresher calls this; tests may too)."""
        banned: dict[str, str] = {}
        own = fetch_reports(self.dht, self.run_id).get(self.own_subkey)
        if own is not None:
            for peer in own.banned:
                banned[peer] = "by this peer's rejection ledger"
        by_coordinator: set[str] = set()
        if self.authority is not None:
            ban_list = fetch_ban_list(self.dht, self.run_id, self.authority)
            for entry in ban_list.bans if ban_list is not None else ():
                banned[entry.peer_id] = f"{BY_COORDINATOR}: {entry.reason}" if entry.reason else BY_COORDINATOR
                by_coordinator.add(entry.peer_id)
        with self._lock:
            self._banned, self._by_coordinator = banned, frozenset(by_coordinator)

    def _ensure_refresher(self) -> None:
        if self._refresher_pid == os.getpid():
            return
        self._refresher_pid = os.getpid()
        threading.Thread(target=self._refresh_forever, name="ban-gate-refresh", daemon=True).start()

    def _refresh_forever(self) -> None:
        while True:
            try:
                self.refresh()
            except Exception as e:  # a DHT hiccup: keep the last known bans
                logger.debug("ban list refresh failed: %s", e)
            time.sleep(self.refresh_every)


def fetch_ban_authority(coordinator_url: str | None, timeout: float = 30.0) -> bytes | None:
    """The coordinator's DHT subkey that signs ``<run_id>_bans``, from its ``GET /api/v1/run`` (``bans.authority``,
    base64). None without a coordinator or from one that does not publish bans: only local bans apply then."""
    if not coordinator_url:
        return None
    try:
        response = httpx.get(f"{coordinator_url.rstrip('/')}/api/v1/run", timeout=timeout)
        response.raise_for_status()
        authority = (response.json().get("bans") or {}).get("authority")
        return base64.b64decode(authority) if authority else None
    except (httpx.HTTPError, ValueError, TypeError, binascii.Error) as e:
        logger.warning("could not read the coordinator's ban authority (only local bans apply): %s", e)
        return None
