"""The systemd units: restart policy, a dedicated user, state in the StateDirectory, command lines the real CLIs
accept, and ``systemd-analyze verify`` clean (unknown keys and bad values are reported there)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from deploy_checks import DEPLOY, after_python_m, expand_exec, parse_command, read_unit, unit_environment
from system_tools import require_tool

from peer.run.work_dir import peer_work_dir

UNITS = {role: DEPLOY / f"systemd/warmswarm-{role}.service" for role in ("coordinator", "peer")}
HOME = "/var/lib/warmswarm"  # the warmswarm user's home (deploy/README.md: useradd --home-dir)


def _command(unit: dict) -> list[str]:
    (exec_start,) = unit["Service"]["ExecStart"]
    return expand_exec(exec_start, unit_environment(unit))


@pytest.mark.parametrize("role", sorted(UNITS))
def test_unit_restarts_on_failure_as_a_dedicated_user_and_keeps_state(role):
    unit = read_unit(UNITS[role])
    service = unit["Service"]
    assert service["Restart"] == ["on-failure"]
    assert service["User"][-1] not in ("root", "0") and service["User"] == service["Group"]
    (state,) = service["StateDirectory"]
    assert service["WorkingDirectory"] == [f"/var/lib/{state}"]
    assert "HF_HOME" in unit_environment(unit), "model downloads belong in the CacheDirectory"
    assert unit_environment(unit)["HF_HOME"].startswith(f"/var/cache/{service['CacheDirectory'][0]}/")
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert Path(_command(unit)[0]).is_absolute(), "systemd needs an absolute ExecStart path"


def test_coordinator_unit_command_parses_and_keeps_identity_and_checkpoints_in_state(parsers):
    unit = read_unit(UNITS["coordinator"])
    args = parse_command(parsers, after_python_m(_command(unit)))
    state = Path("/var/lib") / unit["Service"]["StateDirectory"][0]
    assert args.command == "start"
    assert Path(args.data_dir) == state
    assert Path(args.identity_path).parent == state
    assert (args.http_port, args.grpc_port, args.dht_port) == (8080, 50051, 31337)
    # The optional extra flags from the env file really are flags of `start`.
    env = unit_environment(unit) | {"WARMSWARM_COORDINATOR_ARGS": "--public_host 203.0.113.7"}
    (exec_start,) = unit["Service"]["ExecStart"]
    assert parse_command(parsers, after_python_m(expand_exec(exec_start, env))).public_host == "203.0.113.7"


def test_peer_unit_command_parses_with_its_default_environment(parsers):
    unit = read_unit(UNITS["peer"])
    args = parse_command(parsers, after_python_m(_command(unit)))
    assert args.command == "join"
    assert urlparse(args.coordinator).scheme == "http" and urlparse(args.coordinator).port == 8080
    assert Path(args.identity_path).parent == Path("/var/lib") / unit["Service"]["StateDirectory"][0]
    env = unit_environment(unit) | {"WARMSWARM_PEER_ARGS": "--client_mode --peer_name lab-gpu-1"}
    (exec_start,) = unit["Service"]["ExecStart"]
    extra = parse_command(parsers, after_python_m(expand_exec(exec_start, env)))
    assert extra.client_mode is True and extra.peer_name == "lab-gpu-1"


def unit_writable_dirs(unit: dict) -> list[Path]:
    """What ProtectSystem=strict leaves writable to the service besides /tmp (PrivateTmp) and /dev: its StateDirectory
    and CacheDirectory."""
    service = unit["Service"]
    return [Path("/var/lib") / d for d in service.get("StateDirectory", [])] + [
        Path("/var/cache") / d for d in service.get("CacheDirectory", [])
    ]


@pytest.mark.parametrize("role", sorted(UNITS))
def test_caches_go_to_the_cache_directory_not_the_read_only_home(role):
    unit = read_unit(UNITS[role])
    service = unit["Service"]
    assert service["ProtectSystem"] == ["strict"] and service["PrivateTmp"] == ["yes"]
    cache = Path(unit_environment(unit)["XDG_CACHE_HOME"])
    assert cache == Path("/var/cache") / service["CacheDirectory"][0]


def test_peer_work_dir_is_one_the_unit_may_write(parsers):
    unit = read_unit(UNITS["peer"])
    args = parse_command(parsers, after_python_m(_command(unit)))
    work = peer_work_dir("RUN", args.work_dir, {"HOME": HOME} | unit_environment(unit))
    writable = unit_writable_dirs(unit)
    assert any(w in work.parents for w in writable), f"work dir {work} is outside {writable}: read-only there"


def test_systemd_analyze_verify_is_clean(tmp_path):
    analyze = require_tool("systemd-analyze")
    copies = []
    for path in UNITS.values():
        # The install path /opt/warmswarm does not exist here; point ExecStart at this interpreter instead.
        text = path.read_text().replace("/opt/warmswarm/.venv/bin/python", sys.executable)
        copy = tmp_path / path.name
        copy.write_text(text)
        copies.append(str(copy))
    result = subprocess.run([analyze, "verify", *copies], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stdout + result.stderr
