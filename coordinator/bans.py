"""The coordinator's side of bans: read the peers' signed reports, ban by majority, publish the signed ban list.

Rule (``decide_bans``): a peer is banned when at least ``max(2, ⌊v/2⌋ + 1)`` of the ``v`` voters report it banned
in their ledger, the voters being the live peers other than the accused (alive by their metrics records) plus any
other peer with a live report. Why a majority: the reports are the only evidence the coordinator has, an attacker
can report too, and honest peers are assumed to be the majority (the same assumption CenteredClip needs). Why at
least 2: a single report could be the attacker accusing an honest peer — in a 2-peer swarm the two reports are
symmetric and no one can tell who lies, so the coordinator bans no one there; each honest peer's own ledger still
stops averaging with the offender (its parts get weight 0 there), so the local defence does not wait for the
coordinator. In a 3-peer swarm with one attacker the two honest peers are 2 of 2 voters: banned.

A volunteer the coordinator has revoked (removed from the allowlist, or banned: ``coordinator.auth``) neither
reports nor votes any more: its reports stay in the DHT until they expire, but ``judge`` drops them, and its libp2p
ids are not counted among the voters.

Bans are permanent for the run and survive a restart (SQLite ``bans`` table); the list is republished (signed with
the coordinator's DHT key, the same key as the run config) whenever it changes and every ``refresh`` seconds.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import hivemind
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.utils import get_dht_time

from coordinator.store import BanRow, Store
from peer.run.records import BanEntry, BanList, BanReport, LocalMetrics, bans_key
from peer.run.revocations import Revoked
from peer.run.tokens import key_fingerprint
from peer.swarm.authorizers import dht_revoked
from peer.swarm.bans import fetch_reports

logger = logging.getLogger(__name__)

BAN_LIST_EXPIRATION = 600.0


@dataclass(frozen=True)
class Verdict:
    peer_id: str  # libp2p id
    reason: str
    reporters: int
    voters: int


def decide_bans(reports: Mapping[str, BanReport], live_peers: set[str], already: set[str]) -> list[Verdict]:
    """New bans from ``reports`` (by reporter libp2p id); ``live_peers`` are the libp2p ids alive by their metrics.
    Reports from banned peers do not count; peers in ``already`` are not judged again."""
    reports = {reporter: r for reporter, r in reports.items() if reporter not in already}
    accused = sorted({peer for r in reports.values() for peer in r.banned} - already)
    verdicts = []
    for peer in accused:
        voters = (set(live_peers) | set(reports)) - {peer} - already
        accusers = [reporter for reporter in sorted(voters) if reporter in reports and peer in reports[reporter].banned]
        needed = max(2, len(voters) // 2 + 1)
        if len(accusers) >= needed:
            why = reports[accusers[0]].banned[peer]
            reason = f"reported by {len(accusers)} of {len(voters)} peers ({why})"[:200]
            verdicts.append(Verdict(peer, reason, len(accusers), len(voters)))
    return verdicts


def counted_reports(reports: Mapping[bytes, BanReport], revoked: Revoked) -> dict[bytes, BanReport]:
    """``reports`` (by the reporter's ``[owner:<key>]`` subkey) less those of revoked reporters: by the key that
    signed the report, or by the libp2p id it reports from."""
    prefix, suffix = RSASignatureValidator.PUBLIC_KEY_FORMAT.split(b"_key_")
    counted = {}
    for subkey, report in reports.items():
        key = subkey[len(prefix) : len(subkey) - len(suffix)] if subkey.startswith(prefix) else subkey
        if key_fingerprint(key) in revoked.keys or report.peer_id in revoked.peer_ids:
            continue
        counted[subkey] = report
    return counted


@dataclass
class BanCourt:
    """Run once per monitor pass (``judge``): reads ``<run_id>_reports``, stores new bans, keeps the signed
    ``<run_id>_bans`` fresh, and counts rejected contributions by reason (deltas of the reporters' counters)."""

    dht: hivemind.DHT
    store: Store
    run_id: str
    subkey: bytes  # the coordinator's signed subkey (RSASignatureValidator.local_public_key)
    refresh: float = 60.0
    revoked: Callable[[], Revoked] | None = None  # default: what the DHT node's authorizer refuses as revoked
    _published_at: float = 0.0
    _published: tuple[str, ...] = ()

    def judge(self, alive: Mapping[str, LocalMetrics], now: float | None = None) -> list[Verdict]:
        """``alive``: the monitor's alive records by store peer id. Returns the bans decided in this pass."""
        now = time.time() if now is None else now
        revoked = self.revoked() if self.revoked is not None else dht_revoked(self.dht)
        by_subkey = counted_reports(fetch_reports(self.dht, self.run_id), revoked)
        self._count_rejections(by_subkey)
        reports = {r.peer_id: r for r in by_subkey.values()}
        identity = {rec.peer_id: (pid, rec.peer_name) for pid, rec in alive.items() if rec.peer_id}
        bans = self.store.bans()
        already = {b.peer_id for b in bans}
        for b in bans:
            if not b.store_peer_id and b.peer_id in identity:
                self.store.identify_ban(b.peer_id, *identity[b.peer_id])
        verdicts = decide_bans(reports, set(identity) - revoked.peer_ids, already)
        for v in verdicts:
            store_id, name = identity.get(v.peer_id, ("", ""))
            self.store.add_ban(BanRow(v.peer_id, store_id, name, v.reason, v.reporters, now))
            logger.warning("banned %s (%s): %s", name or v.peer_id, v.peer_id, v.reason)
        self.publish(force=bool(verdicts))
        return verdicts

    def publish(self, force: bool = False) -> bool:
        bans = self.store.bans()
        ids = tuple(sorted(b.peer_id for b in bans))
        due = time.monotonic() - self._published_at > self.refresh
        if not bans or not (force or due or ids != self._published):
            return False
        ban_list = BanList(bans=[BanEntry(peer_id=b.peer_id, reason=b.reason) for b in bans], time=time.time())
        ok = self.dht.store(
            bans_key(self.run_id),
            subkey=self.subkey,
            value=ban_list.dict(),
            expiration_time=get_dht_time() + BAN_LIST_EXPIRATION,
        )
        if ok:
            self._published_at, self._published = time.monotonic(), ids
        else:
            logger.warning("could not publish the ban list (no DHT node stored it); retrying next pass")
        return bool(ok)

    def _count_rejections(self, reports: Mapping[bytes, BanReport]) -> None:
        for subkey, report in reports.items():
            if report.counts:
                self.store.record_contribution_rejections(hashlib.sha256(subkey).hexdigest(), dict(report.counts))


def ban_authority_info(subkey: bytes) -> dict:
    """What ``GET /api/v1/run`` tells peers under ``"bans"``: the subkey whose ``<run_id>_bans`` record they trust
    (read by ``peer.swarm.bans.fetch_ban_authority``)."""
    return {"authority": base64.b64encode(subkey).decode()}
