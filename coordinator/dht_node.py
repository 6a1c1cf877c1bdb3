"""The coordinator's DHT node: a fixed port and a persistent identity, so the join line survives a restart; a
bootstrap that also dials the peers it was connected to before a restart (``known_peers.json``); and the run config
it publishes under ``<run_id>_config``, signed with the coordinator's persistent RSA key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import hivemind
from hivemind.dht.validation import RecordValidatorBase
from hivemind.utils import get_dht_time
from hivemind.utils.auth import AuthorizerBase

from coordinator.deployment import CoordinatorSpec
from peer.config import RunConfig, config_to_dict
from peer.errors import UserError
from peer.run.records import config_key
from peer.swarm.dht import READY_GRACE_S, run_dht
from peer.swarm.overrides.dht_process import TolerantDHT

logger = logging.getLogger(__name__)

IDENTITY_NAME = "dht_identity.key"
CONFIG_RECORD_TTL = 3600.0
KNOWN_PEERS_NAME = "known_peers.json"
KNOWN_PEERS_MAX = 64
# How long the coordinator waits for its DHT process to list the connected peers. A healthy one answers in
# milliseconds; one whose p2p daemon is gone never answers, and the coordinator's main thread must not wait on it
# forever (it did: a coordinator whose p2pd had closed ignored SIGTERM, its main thread parked in this query).
KNOWN_PEERS_QUERY_TIMEOUT_S = 10.0
DHT_STARTUP_TIMEOUT_S = 15.0  # p2pd start-up and bootstrap (hivemind's default)


def start_coordinator_dht(
    cfg: RunConfig,
    spec: CoordinatorSpec,
    validators: Sequence[RecordValidatorBase],
    authorizer: AuthorizerBase | None = None,
) -> hivemind.DHT:
    """The coordinator's DHT node on a fixed port with a persistent identity (the peer id in the join line stays
    the same across restarts). It bootstraps from ``spec.initial_peers`` and from the peers it was connected to
    before a restart (``known_peers.json``): peers that joined through the coordinator know no one else to dial, so
    after a restart the coordinator must dial them, or it would sit alone beside a running swarm."""
    identity = spec.identity_path or Path(spec.data_dir) / IDENTITY_NAME
    known = read_known_peers(Path(spec.data_dir))
    attempts = [list(spec.initial_peers) + known] + ([list(spec.initial_peers)] if known else [])
    for i, initial_peers in enumerate(attempts):
        try:
            kwargs = dict(
                initial_peers=initial_peers or None,
                host_maddrs=_dht_maddrs(spec.host, spec.dht_port),
                announce_maddrs=_dht_maddrs(spec.public_host, spec.dht_port) if spec.public_host else None,
                identity_path=str(identity),
                use_relay=spec.use_relay,
                record_validators=list(validators),
                authorizer=authorizer,  # a private run: tokens on every DHT message, ours signed by ourselves
                startup_timeout=DHT_STARTUP_TIMEOUT_S,
                start=False,
            )
            return run_dht(partial(TolerantDHT, **kwargs), DHT_STARTUP_TIMEOUT_S + READY_GRACE_S)
        except UserError:  # the DHT process died or hung: no other bootstrap list would help
            raise
        except Exception as e:  # hivemind re-raises the p2pd child's errors with their own types
            text = " ".join(str(e).split())[:300] or type(e).__name__
            if i + 1 < len(attempts):
                logger.warning(
                    "none of the %d previously known peers answered (%s); starting without them", len(known), text
                )
                continue
            raise UserError(f"could not start the DHT on {spec.host}:{spec.dht_port}: {text}") from None
    raise AssertionError("unreachable")


def publish_config(dht: hivemind.DHT, cfg: RunConfig, subkey: bytes, timeout: float = 60.0) -> bool:
    """Stores the run config under ``<run_id>_config`` with the coordinator's public key as subkey: the DHT's
    ``RSASignatureValidator`` signs it, so only this coordinator can write or replace it."""
    future = dht.store(
        config_key(cfg.run_id), config_to_dict(cfg), get_dht_time() + CONFIG_RECORD_TTL, subkey=subkey,
        return_future=True,
    )
    try:
        return bool(future.result(timeout=timeout))
    except TimeoutError:  # a DHT process that no longer answers (see KNOWN_PEERS_QUERY_TIMEOUT_S)
        future.cancel()
        logger.warning("the DHT process did not store the run config within %.0f s; will try again", timeout)
        return False


async def _connected_peer_maddrs(dht: hivemind.DHT, node) -> list[str]:
    """Runs inside the DHT process: full multiaddrs (with /p2p/<id>) of the peers the node is connected to."""
    infos = await node.p2p.list_peers()
    return [f"{addr}/p2p/{info.peer_id}" for info in infos for addr in info.addrs if "/p2p-circuit" not in str(addr)]


def save_known_peers(dht: hivemind.DHT, data_dir: Path, timeout: float = KNOWN_PEERS_QUERY_TIMEOUT_S) -> int | None:
    """Remembers the currently connected peers for the next start (the file is rewritten only when they changed, so
    calling it every few seconds costs one query to the DHT process); returns how many addresses it holds, or None
    when the DHT process did not answer within ``timeout`` (one WARNING line; the file is left as it was)."""
    future = dht.run_coroutine(_connected_peer_maddrs, return_future=True)
    try:
        maddrs = sorted(set(future.result(timeout=timeout)))
    except TimeoutError:
        future.cancel()
        logger.warning("the DHT process did not list its connected peers within %.0f s; known peers not updated",
                       timeout)  # fmt: skip
        return None
    path, text = data_dir / KNOWN_PEERS_NAME, json.dumps(maddrs, indent=1)
    if maddrs and (not path.is_file() or path.read_text() != text):
        tmp = data_dir / (KNOWN_PEERS_NAME + ".tmp")
        tmp.write_text(text)
        tmp.replace(data_dir / KNOWN_PEERS_NAME)
    return len(maddrs)


def read_known_peers(data_dir: Path) -> list[str]:
    try:
        maddrs = json.loads((data_dir / KNOWN_PEERS_NAME).read_text())
    except (OSError, ValueError):
        return []
    return [m for m in maddrs if isinstance(m, str)][:KNOWN_PEERS_MAX] if isinstance(maddrs, list) else []


def visible_maddrs(dht: hivemind.DHT, public_host: str) -> list[str]:
    """The node's multiaddrs as other machines dial them (a wildcard listen address replaced by ``public_host``),
    relayed ones left out: the ``initial_peers`` a volunteer is given."""
    return [
        str(a).replace("/ip4/0.0.0.0/", f"/ip4/{public_host}/")
        for a in dht.get_visible_maddrs()
        if "/p2p-circuit" not in str(a)
    ]


def _dht_maddrs(host: str, port: int) -> list[str]:
    return [f"/ip6/{host}/tcp/{port}"] if ":" in host else [f"/ip4/{host}/tcp/{port}"]
