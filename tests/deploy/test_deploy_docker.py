"""The Dockerfile and docker-compose.yml, checked without a Docker engine: hadolint, what the image copies and runs,
and every compose command line parsed by the real CLI parsers, with ports and addresses that agree."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from deploy_checks import (
    DEPLOY,
    ROOT,
    compose_bytes,
    copy_sources,
    dockerfile_env,
    dockerignore_patterns,
    exec_form,
    ignored_by,
    parse_command,
    read_dockerfile,
)
from system_tools import require_tool

from peer.run.work_dir import peer_work_dir

DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
WARMSWARM_SERVICES = ("coordinator", "peer-1", "peer-2")


@pytest.fixture(scope="module")
def steps():
    return read_dockerfile(DOCKERFILE)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _final(steps, keyword: str):
    last_stage = max(s.stage for s in steps)
    return [s for s in steps if s.stage == last_stage and s.keyword == keyword]


def test_hadolint_finds_nothing():
    hadolint = require_tool("hadolint")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_runs_as_a_numeric_non_root_user(steps):
    users = _final(steps, "USER")
    assert users, "the final stage must switch to a non-root USER"
    uid = users[-1].value.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1].value}: want a numeric non-zero uid"
    later = [s for s in steps if s.stage == users[-1].stage and steps.index(s) > steps.index(users[-1])]
    assert not any(s.keyword == "RUN" for s in later), "nothing may RUN after switching users"


def test_torch_build_args_pick_the_wheel_index_and_default_to_the_pinned_cpu_build(steps):
    args = {}
    for step in steps:
        if step.keyword == "ARG" and "=" in step.value:
            name, default = step.value.split("=", 1)
            args[name] = default
    assert args.get("TORCH_VARIANT") == "cpu"
    pinned = re.search(r"^torch==(\S+)", (ROOT / "requirements/constraints.txt").read_text(), re.M)
    assert pinned and args.get("TORCH_VERSION") == pinned.group(1), "TORCH_VERSION must match the constraints pin"
    torch_install = [s.value for s in steps if s.keyword == "RUN" and "torch==" in s.value]
    assert torch_install, "the build must install torch explicitly"
    assert "download.pytorch.org/whl/${TORCH_VARIANT}" in torch_install[0]
    assert "${TORCH_VERSION}" in torch_install[0]


def test_copy_sources_exist_and_are_not_dockerignored(steps):
    patterns = dockerignore_patterns(DEPLOY / "Dockerfile.dockerignore")
    sources = [src for step in steps if step.keyword in ("COPY", "ADD") for src in copy_sources(step)]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: no such path in the build context (repository root)"
        assert not ignored_by(patterns, src), f"COPY {src}: excluded by Dockerfile.dockerignore"
    assert ignored_by(patterns, ".venv/bin/python") and ignored_by(patterns, "runs/demo")


def test_entrypoint_is_python_m_under_an_init_and_cache_lives_in_a_volume(steps):
    entrypoint = exec_form(_final(steps, "ENTRYPOINT")[-1].value)
    assert entrypoint and entrypoint[0] == "tini" and entrypoint[-2:] == ["python", "-m"], entrypoint
    volumes = exec_form(_final(steps, "VOLUME")[-1].value)
    assert volumes and "/cache" in volumes
    env = " ".join(s.value for s in _final(steps, "ENV"))
    assert "HF_HOME=/cache/" in env, "Hugging Face downloads must land in the cache volume"


def test_compose_builds_this_dockerfile_from_the_repository_root(compose):
    for name in WARMSWARM_SERVICES:
        build = compose["services"][name]["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == ROOT and (context / build["dockerfile"]).resolve() == DOCKERFILE
        assert "TORCH_VARIANT" in build["args"]
        assert not compose["services"][name].get("init"), "the image's tini is PID 1 already; a second init only warns"


def test_compose_commands_parse_with_the_real_clis(compose, parsers):
    coordinator = parse_command(parsers, compose["services"]["coordinator"]["command"])
    assert coordinator.command == "start"
    for name in ("peer-1", "peer-2"):
        peer = parse_command(parsers, compose["services"][name]["command"])
        assert peer.command == "join"


def _mount_targets(service: dict) -> dict[str, str]:
    """container path -> source (named volume or ./bind path)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        mounts[target] = source
    return mounts


def _under(path: str, mounts: dict[str, str]) -> str | None:
    for target, source in mounts.items():
        if Path(path) == Path(target) or Path(target) in Path(path).parents:
            return source
    return None


def test_compose_ports_addresses_and_volumes_agree(compose, parsers):
    services = compose["services"]
    coordinator = parse_command(parsers, services["coordinator"]["command"])
    ports = {coordinator.http_port, coordinator.grpc_port, coordinator.dht_port}
    published = {int(p.split(":")[-1]) for p in services["coordinator"]["ports"]}
    assert published == ports, f"published {published}, the coordinator listens on {ports}"
    exposed = {int(p) for s in read_dockerfile(DOCKERFILE) if s.keyword == "EXPOSE" for p in s.value.split()}
    assert exposed == ports, "the image's EXPOSE must match the coordinator's ports"
    health = " ".join(services["coordinator"]["healthcheck"]["test"])
    assert f"127.0.0.1:{coordinator.http_port}/api/v1/run" in health

    named = set(compose.get("volumes") or {})
    coordinator_mounts = _mount_targets(services["coordinator"])
    for path in (coordinator.data_dir, coordinator.identity_path):
        assert _under(path, coordinator_mounts) in named, f"{path} must live on a named volume"
    config_path = coordinator.config
    assert config_path.startswith("/app/configs/"), "the coordinator reads a config the image copies in"
    assert (ROOT / "configs" / config_path.removeprefix("/app/configs/")).is_file(), f"no {config_path} in configs/"

    identities = set()
    for name in ("peer-1", "peer-2"):
        peer = parse_command(parsers, services[name]["command"])
        url = urlparse(peer.coordinator)
        assert (url.hostname, url.port) == ("coordinator", coordinator.http_port), peer.coordinator
        assert services[name]["depends_on"]["coordinator"]["condition"] == "service_healthy"
        mounts = _mount_targets(services[name])
        identities.add(_under(peer.identity_path, mounts))
    assert len(identities) == 2 and identities <= named, "each peer keeps its own identity on its own volume"

    for service in services.values():
        for target, source in _mount_targets(service).items():
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"bind mount {source} -> {target}: no such file"
            else:
                assert source in named, f"volume {source} is not declared"


def test_compose_peers_keep_their_work_dir_on_a_volume_and_have_room_in_dev_shm(compose, parsers, steps):
    """Docker's /dev/shm is 64 MB unless ``shm_size`` says otherwise; hivemind's averagers keep their tensors there."""
    image_env = {"HOME": "/home/warmswarm"} | dockerfile_env(steps)
    named = set(compose.get("volumes") or {})
    for name in ("peer-1", "peer-2"):
        service = compose["services"][name]
        peer = parse_command(parsers, service["command"])
        work = peer_work_dir("RUN", peer.work_dir, image_env | (service.get("environment") or {}))
        assert _under(str(work), _mount_targets(service)) in named, f"{name}: work dir {work} is not on a volume"
        assert compose_bytes(service["shm_size"]) >= 2 * 2**30, f"{name}: shm_size {service['shm_size']}"
    assert compose_bytes(compose["services"]["coordinator"]["shm_size"]) >= 2**30


def test_compose_prometheus_and_grafana_point_at_the_right_services(compose, parsers):
    services = compose["services"]
    coordinator = parse_command(parsers, services["coordinator"]["command"])
    prom = services["prometheus"]
    config_flag = next(a for a in prom["command"] if a.startswith("--config.file="))
    mounts = _mount_targets(prom)
    config_in_container = config_flag.split("=", 1)[1]
    assert mounts.get(config_in_container) == "./prometheus/prometheus.yml"
    prom_config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    for rule_file in prom_config.get("rule_files", []):
        assert str(Path(config_in_container).parent / rule_file) in mounts, f"rule file {rule_file} is not mounted"
    targets = [t for job in prom_config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    assert targets == [f"coordinator:{coordinator.http_port}"]
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in prom_config["scrape_configs"])

    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    url = urlparse(datasources["datasources"][0]["url"])
    prom_ports = {int(p.split(":")[-1]) for p in prom["ports"]}
    assert url.hostname == "prometheus" and url.port in prom_ports
    grafana_mounts = _mount_targets(services["grafana"])
    assert grafana_mounts.get("/etc/grafana/provisioning") == "./grafana/provisioning"


def _stage_build_context(steps, patterns: list[str], into: Path) -> Path:
    """Reproduces, on disk, what the build stage's COPYs put into its WORKDIR (dockerignored paths left out)."""
    workdir = into
    for step in (s for s in steps if s.stage == 0):
        if step.keyword == "WORKDIR":
            workdir = into / step.value.lstrip("/")
        if step.keyword != "COPY":
            continue
        *sources, dest = [w for w in shlex.split(step.value) if not w.startswith("--")]
        target = workdir / dest
        for src in sources:
            origin = ROOT / src
            for path in [origin] if origin.is_file() else sorted(p for p in origin.rglob("*") if p.is_file()):
                relative = path.relative_to(ROOT).as_posix()
                if ignored_by(patterns, relative):
                    continue
                out = target / path.name if origin.is_file() else target / path.relative_to(origin)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, out)
    return workdir


@pytest.mark.timeout(180)
def test_the_build_stage_installs_a_complete_package_from_what_it_copies(steps, tmp_path):
    """The image's `pip install .` sees only the COPYed files: the wheel they make must hold every module and
    data file of the three packages (a forgotten COPY or package-data pattern would only show in a real build)."""
    patterns = dockerignore_patterns(DEPLOY / "Dockerfile.dockerignore")
    source = _stage_build_context(steps, patterns, tmp_path / "ctx")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = tmp_path.glob("warmswarm-*.whl")
    packaged = set(zipfile.ZipFile(wheel).namelist())
    wanted = {
        p.relative_to(ROOT).as_posix()
        for package in ("peer", "coordinator", "protos")
        for p in (ROOT / package).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".html", ".js", ".css", ".proto")
    }
    missing = sorted(wanted - packaged)
    assert not missing, f"the image would lack {missing[:10]}"
