"""Scenarios with a hostile party: forged, malformed and oversized DHT records; tampered and expired access tokens
against a private run; attacker peers at 1 of 4 (defences on and off). Rejections are read back from the
coordinator's ``/metrics``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from bench.faultlib.harness import Row
from bench.faultlib.procs import Coordinator, TinyModel, prepare_run
from peer.children import ProcessSet

REJECTED = "warmswarm_rejected_records_total"


@dataclass(frozen=True)
class RecordSettings:
    count: int = 5  # records of each kind


def bad_records(work: Path, settings: RecordSettings = RecordSettings()) -> list[Row]:
    from bench.faultlib.bad_records import Attacker

    name = "forged / malformed / oversized DHT records"
    kinds = {"forged": "bad_signature", "malformed": "malformed", "oversized": "oversized"}
    run = prepare_run(work / "run", "faults-records", TinyModel())
    with ProcessSet(work / "procs") as procs:
        coordinator = Coordinator(procs, run, work / "data")
        coordinator.start()
        before = {reason: coordinator.counter(REJECTED, reason=reason) for reason in kinds.values()}
        attacker = Attacker.join(run.run_id, coordinator.get("/api/v1/run")["initial_peers"])
        try:
            for kind in kinds:
                for _ in range(settings.count):
                    getattr(attacker, kind)()
            attacker.honest()
            deadline = time.monotonic() + 60
            while True:
                counted = {r: coordinator.counter(REJECTED, reason=r) - before[r] for r in kinds.values()}
                peers = coordinator.get("/api/v1/peers")["peers"]
                if (all(v >= settings.count for v in counted.values()) and peers) or time.monotonic() > deadline:
                    break
                time.sleep(1)
        finally:
            attacker.close()
        progress = coordinator.progress()
    rows = [
        Row(name, f"{kind} records sent: rejected and counted as {reason}", f"{counted[reason]:.0f} counted",
            f">= {settings.count}", counted[reason] >= settings.count)
        for kind, reason in kinds.items()
    ]  # fmt: skip
    forged_step = progress.get("global_step", 0)
    rows.append(Row(name, "forged step 10^6 reached the coordinator's progress", f"global step {forged_step}",
                    "< 10^6", forged_step < 10**6))  # fmt: skip
    rows.append(Row(name, "control: the attacker's one well-formed record is accepted",
                    f"{len(peers)} peer(s) listed", "1", len(peers) == 1))  # fmt: skip
    return rows


@dataclass(frozen=True)
class TokenSettings:
    attempts: int = 2  # join attempts per kind of token


def bad_tokens(work: Path, settings: TokenSettings = TokenSettings()) -> list[Row]:
    """A private run (allowlist with one volunteer): a hostile node tries to join its DHT with a tampered token (a
    real one whose expiry was pushed back) and with an expired one; the control joins with a valid token got over
    HTTP with the volunteer's secret. Refusals are read back from the coordinator's ``/metrics``."""
    from hivemind.utils import get_dht_time
    from hivemind.utils.crypto import RSAPrivateKey

    from bench.faultlib.bad_tokens import tampered, try_join
    from coordinator.allowlist import add_volunteer
    from coordinator.auth import AUTHORITY_KEY_NAME
    from coordinator.signing_key import load_or_create_signing_key
    from peer.run.tokens import Credentials, request_token, sign_token

    name = "tampered / expired access tokens"
    run = prepare_run(work / "run", "faults-tokens", TinyModel())
    allowlist = work / "allowlist.tsv"
    secret = add_volunteer(allowlist, "alice")
    reasons = {"tampered": "bad_token", "expired": "expired_token"}
    with ProcessSet(work / "procs") as procs:
        coordinator = Coordinator(procs, run, work / "data", extra_args=["--allowlist", str(allowlist)])
        coordinator.start()
        initial = coordinator.get("/api/v1/run")["initial_peers"]
        key = RSAPrivateKey()
        valid = request_token(coordinator.url, Credentials.parse(f"alice:{secret}"), key.get_public_key())
        authority = load_or_create_signing_key(work / "data" / AUTHORITY_KEY_NAME)  # the organiser's key, on disk
        expired = sign_token(authority, run.run_id, "alice", key.get_public_key().to_bytes(), get_dht_time() - 60)
        before = {r: coordinator.counter(REJECTED, reason=r) for r in reasons.values()}
        joined = {
            "tampered": [try_join(initial, tampered(valid), key) for _ in range(settings.attempts)],
            "expired": [try_join(initial, expired, key) for _ in range(settings.attempts)],
        }
        control = try_join(initial, valid, key)
        deadline = time.monotonic() + 30
        while True:
            counted = {r: coordinator.counter(REJECTED, reason=r) - before[r] for r in reasons.values()}
            if all(v >= settings.attempts for v in counted.values()) or time.monotonic() > deadline:
                break
            time.sleep(1)
    rows = []
    for kind, reason in reasons.items():
        got_in = sum(a.joined for a in joined[kind])
        rows.append(Row(name, f"{kind} token: joins / refusals counted as {reason}",
                        f"{got_in}/{settings.attempts} joined, {counted[reason]:.0f} counted",
                        "0 joined, refusals counted", got_in == 0 and counted[reason] >= 1))  # fmt: skip
    rows.append(Row(name, "control: the valid token joins", "joined" if control.joined else f"refused: {control.error}",
                    "joined", control.joined))  # fmt: skip
    return rows


@dataclass(frozen=True)
class AttackSettings:
    attacks: tuple[str, ...] = ("sign_flip", "random", "nan")
    peers: int = 4
    steps: int = 12
    tolerance: float = 0.05  # defences on: final loss within 5 % of the clean run's


def attacks(work: Path, settings: AttackSettings = AttackSettings()) -> list[Row]:
    """The clean run once, then every attack with defences on and off; each a real 4-peer swarm (the last peer
    attacks), scored by the honest peers' mean training loss over the last global steps (AttackResult.final_loss)."""
    import math

    from bench.faultlib.attacks import run_attack_scenario

    name = f"attacker at 1 of {settings.peers}"
    clean = run_attack_scenario(None, True, work / "clean", peers=settings.peers, steps=settings.steps)
    rows = [
        Row(
            name,
            f"clean run: honest peers' training loss at step {clean.step}",
            f"{clean.final_loss:.3f}",
            "context",
            None,
        )
    ]
    for attack in settings.attacks:
        for defences in (True, False):
            label = f"{attack}, defences {'on' if defences else 'off'}: final loss"
            try:
                result = run_attack_scenario(
                    attack, defences, work / f"{attack}-{defences}", peers=settings.peers, steps=settings.steps
                )
            except (RuntimeError, TimeoutError) as e:  # the swarm never reached the step: damage, not a bench bug
                why = str(e).splitlines()[0][:80]
                rows.append(Row(name, label, f"no checkpoint at step {settings.steps}: {why}",
                                "worse than clean" if not defences else "within tolerance", not defences))  # fmt: skip
                continue
            loss = result.final_loss
            change = (loss - clean.final_loss) / clean.final_loss if math.isfinite(loss) else math.inf
            figure = f"{loss:.3f} ({100 * change:+.1f} %)" if math.isfinite(loss) else "NaN"
            if result.banned:
                figure += f"; banned {', '.join(result.banned)}"
            if defences:
                target, passed = f"within {100 * settings.tolerance:.0f} % of clean", abs(change) <= settings.tolerance
            else:
                target, passed = f"worse than clean by > {100 * settings.tolerance:.0f} %", change > settings.tolerance
            rows.append(Row(name, label, figure, target, passed))
    return rows
