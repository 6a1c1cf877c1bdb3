"""The Kubernetes manifests, checked without a cluster: objects wire together (selectors, named ports, volumes,
services), the container args parse with the real CLIs, the run config in the ConfigMap is a valid RunConfig, and
``kubectl kustomize`` builds the set."""

from __future__ import annotations

import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from deploy_checks import DEPLOY, dockerfile_env, k8s_bytes, parse_command, read_dockerfile
from system_tools import require_tool

from peer.config import config_from_dict
from peer.run.work_dir import peer_work_dir

K8S = DEPLOY / "k8s"


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    found = {}
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / resource).read_text()):
            if doc:
                key = (doc["kind"], doc["metadata"]["name"])
                assert key not in found, f"{key} defined twice"
                found[key] = doc
    return found


def _pod(workload: dict) -> tuple[dict, dict]:
    """(pod spec, its single container)."""
    spec = workload["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return spec, container


def _selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests


def test_workloads_select_their_own_pods_and_run_non_root(objects):
    uid = next(s.value for s in reversed(read_dockerfile(DEPLOY / "Dockerfile")) if s.keyword == "USER")
    for key in (("StatefulSet", "warmswarm-coordinator"), ("Deployment", "warmswarm-peer")):
        workload = objects[key]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert _selects(workload["spec"]["selector"]["matchLabels"], labels), key
        spec, container = _pod(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert str(spec["securityContext"]["runAsUser"]) == uid.split(":")[0], "the image's USER uid"
        mounted = {m["name"] for m in container.get("volumeMounts", [])}
        declared = {v["name"] for v in spec.get("volumes", [])}
        declared |= {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        assert mounted <= declared, f"{key}: mounts undeclared volumes {mounted - declared}"
        if container["securityContext"].get("readOnlyRootFilesystem"):
            paths = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/tmp", "/cache"} <= paths, f"{key}: a read-only root needs writable /tmp (p2pd) and /cache"


def _mount_of(container: dict, path: str) -> dict | None:
    for mount in container.get("volumeMounts", []):
        if Path(path) == Path(mount["mountPath"]) or Path(mount["mountPath"]) in Path(path).parents:
            return mount
    return None


def _volume(spec: dict, name: str) -> dict:
    (volume,) = [v for v in spec["volumes"] if v["name"] == name]
    return volume


def container_env(container: dict) -> dict[str, str]:
    """The environment the container runs with: the image's ``ENV`` (its user's home as HOME), then the manifest's."""
    image = dockerfile_env(read_dockerfile(DEPLOY / "Dockerfile"))
    return {"HOME": "/home/warmswarm"} | image | {e["name"]: e["value"] for e in container.get("env", [])}


def test_peer_work_dir_is_on_a_writable_volume_under_the_read_only_root(objects, parsers):
    spec, container = _pod(objects[("Deployment", "warmswarm-peer")])
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    args = parse_command(parsers, container["args"])
    env = container_env(container)
    assert env.get("XDG_CACHE_HOME"), "the work dir's default follows XDG_CACHE_HOME"
    work = peer_work_dir("RUN", args.work_dir, env)
    mount = _mount_of(container, str(work))
    assert mount and not mount.get("readOnly"), f"work dir {work} is on the read-only root"
    assert mount["mountPath"] not in ("/tmp", "/dev/shm"), f"work dir {work} belongs on a volume of its own"
    volume = _volume(spec, mount["name"])
    assert "emptyDir" in volume or "persistentVolumeClaim" in volume, volume
    assert env["HF_HOME"].startswith(mount["mountPath"] + "/"), "downloads of the growth source belong there too"


@pytest.mark.parametrize("key", [("StatefulSet", "warmswarm-coordinator"), ("Deployment", "warmswarm-peer")])
def test_dev_shm_is_a_memory_volume_sized_within_the_memory_limit(objects, key):
    """A container's own /dev/shm is 64 MiB; hivemind's averagers keep their tensors there."""
    spec, container = _pod(objects[key])
    mount = _mount_of(container, "/dev/shm")
    assert mount and mount["mountPath"] == "/dev/shm", f"{key}: no volume mounted at /dev/shm"
    empty = _volume(spec, mount["name"]).get("emptyDir", {})
    assert empty.get("medium") == "Memory", f"{key}: /dev/shm must be memory-backed"
    size = k8s_bytes(empty["sizeLimit"])  # without a limit a memory emptyDir may grow to the node's memory
    assert 2**30 <= size < k8s_bytes(container["resources"]["limits"]["memory"]), f"{key}: sizeLimit {size}"


def test_coordinator_args_parse_and_its_state_is_on_the_persistent_volume(objects, parsers):
    workload = objects[("StatefulSet", "warmswarm-coordinator")]
    spec, container = _pod(workload)
    args = parse_command(parsers, container["args"])
    assert args.command == "start"
    claims = {t["metadata"]["name"] for t in workload["spec"]["volumeClaimTemplates"]}
    for path in (args.data_dir, args.identity_path):
        mount = _mount_of(container, path)
        assert mount and mount["name"] in claims, f"{path} must be on a volumeClaimTemplate"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": args.http_port, "grpc": args.grpc_port, "dht": args.dht_port}

    config_mount = _mount_of(container, args.config)
    volume = next(v for v in spec["volumes"] if v["name"] == config_mount["name"])
    configmap = objects[("ConfigMap", volume["configMap"]["name"])]
    key = str(Path(args.config).relative_to(config_mount["mountPath"]))
    assert key in configmap["data"], f"ConfigMap has no key {key}"
    config = config_from_dict(yaml.safe_load(configmap["data"][key]))
    assert config.run_id

    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        action = container[probe]
        port = (action.get("httpGet") or action.get("grpc") or action.get("tcpSocket"))["port"]
        assert port in ports or port in ports.values(), f"{probe} targets port {port}, not a container port"


def test_services_reach_the_coordinator_ports(objects, parsers):
    workload = objects[("StatefulSet", "warmswarm-coordinator")]
    labels = workload["spec"]["template"]["metadata"]["labels"]
    _, container = _pod(workload)
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    service = objects[("Service", "warmswarm-coordinator")]
    assert _selects(service["spec"]["selector"], labels)
    exposed = {}
    for port in service["spec"]["ports"]:
        target = port["targetPort"]
        assert target in named or target in named.values(), f"Service port {port['name']} targets {target}"
        exposed[port["name"]] = port["port"]
    assert exposed == named, "the Service exposes HTTP, gRPC and DHT on the ports the coordinator listens on"
    headless = objects[("Service", workload["spec"]["serviceName"])]
    assert headless["spec"]["clusterIP"] == "None" and _selects(headless["spec"]["selector"], labels)

    _, peer = _pod(objects[("Deployment", "warmswarm-peer")])
    args = parse_command(parsers, peer["args"])
    assert args.command == "join"
    url = urlparse(args.coordinator)
    assert (url.hostname, url.port) == (service["metadata"]["name"], exposed["http"])


def test_kubectl_kustomize_builds_the_manifests():
    kubectl = require_tool("kubectl")
    result = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(result.stdout) if d)
    assert kinds == ["ConfigMap", "Deployment", "Namespace", "Service", "Service", "StatefulSet"]
    assert all(
        d["metadata"].get("namespace") == "warmswarm"
        for d in yaml.safe_load_all(result.stdout)
        if d and d["kind"] != "Namespace"
    )
