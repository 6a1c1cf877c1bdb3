"""A real peer started the way each recipe starts it reaches training: the systemd unit's command and environment
under ``ProtectSystem=strict``, the Kubernetes peer's args, env and volumes under a read-only root filesystem.

Why a mount namespace: the recipes differ from a developer's shell in what they let a process write — the whole
root filesystem read-only (the user's home with it) but for the directories the recipe grants — and a peer that
writes anywhere else fails only there. Here ``unshare --mount`` reproduces that: the root remounted read-only, the
recipe's paths rewritten to directories under a scratch dir that are bound writable (the home bound read-only), a
private ``/tmp`` (PrivateTmp=, the ``tmp`` emptyDir), and for Kubernetes a ``/dev/shm`` of the manifest's size. The
scratch dir is under ``/var/tmp``, since ``/tmp`` is replaced inside. Root needs nothing more; another user needs
unprivileged user namespaces (``--map-root-user``).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from deploy_checks import (
    DEPLOY,
    ROOT,
    dockerfile_env,
    expand_exec,
    k8s_bytes,
    read_dockerfile,
    read_unit,
    unit_environment,
)
from system_tools import in_ci, require_tool

from bench.faultlib.procs import CHILD_ENV, TRAINING, Coordinator, prepare_run
from peer.children import ProcessSet
from peer.run.checkpoint_manifest import MANIFEST
from peer.run.work_dir import peer_work_dir

pytestmark = pytest.mark.slow
LOOPBACK = ["--host_maddrs", "/ip4/127.0.0.1/tcp/0"]  # test plumbing: this machine's loopback, not 0.0.0.0


@dataclass
class Recipe:
    """A peer's command line, environment and writable paths as a recipe gives them, its paths rewritten (``paths``:
    the recipe's path -> a directory under the scratch dir)."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    writable: list[str]  # recipe paths, bound read-write
    read_only: list[str]  # recipe paths under the writable ones' parents that must stay read-only (the home)
    shm_bytes: int | None = None  # a /dev/shm of this size; None: the host's
    paths: dict[str, Path] = field(default_factory=dict)
    stage: Path | None = None  # where this checkout and its venv wait while /tmp is replaced, if they live there

    def local(self, path: str) -> Path:
        """A recipe path (or one under it) as the directory that stands for it here; the longest prefix wins."""
        for prefix in sorted(self.paths, key=len, reverse=True):
            if path == prefix or path.startswith(prefix + "/"):
                return self.paths[prefix] / path[len(prefix) :].lstrip("/")
        return Path(path)

    def rewrite(self, word: str) -> str:
        return str(self.local(word)) if word.startswith("/") else word

    def command(self) -> list[str]:
        """``unshare`` + the mounts + ``env -i`` (the recipe's environment only) + the peer's command line."""
        script = ["set -e"]
        for path in self.read_only:  # first: the writable paths below them are bound on top
            local = shlex.quote(str(self.local(path)))
            script.append(f"mount --bind {local} {local}; mount -o remount,bind,ro {local}")
        for path in self.writable:  # a bind inside a read-only bind comes out read-only: remount it rw
            local = shlex.quote(str(self.local(path)))
            script.append(f"mount --bind {local} {local}; mount -o remount,bind,rw {local}")
        # The checkout and its venv stand for the image's /opt/warmswarm; a clean clone in /tmp (CI's may be one)
        # would vanish under the private /tmp, so each is bound aside first and moved back on top of it.
        keep = sorted({q for q in (ROOT.resolve(), Path(sys.prefix).resolve()) if Path("/tmp") in q.parents})
        keep = [q for q in keep if not any(other in q.parents for other in keep)]
        if keep and self.stage is None:
            raise AssertionError(f"{keep} lie under /tmp and the recipe has no stage dir to keep them in")
        for i, path in enumerate(keep):
            stage = shlex.quote(str(self.stage / f"keep{i}"))
            script.append(f"mkdir -p {stage}; mount --bind {shlex.quote(str(path))} {stage}")
        script.append("mount -t tmpfs -o mode=1777 tmpfs /tmp")
        for i, path in enumerate(keep):
            stage, path = shlex.quote(str(self.stage / f"keep{i}")), shlex.quote(str(path))
            script.append(f"mkdir -p {path}; mount --move {stage} {path}")
        if self.shm_bytes:
            script.append(f"mount -t tmpfs -o mode=1777,size={self.shm_bytes} tmpfs /dev/shm")
        script.append("mount -o remount,bind,ro /")
        script.append(f"cd {shlex.quote(str(self.local(self.cwd)))}")  # the cwd as the mounts now show it
        script.append('exec "$@"')
        userns = [] if os.geteuid() == 0 else ["--map-root-user"]
        env = [f"{k}={self.rewrite(v)}" for k, v in self.env.items()]
        argv = [self.rewrite(w) for w in self.argv]
        unshare = shutil.which("unshare") or "unshare"
        return [unshare, "--mount", "--propagation", "private", *userns, "sh", "-c", "\n".join(script), "sh",
                "env", "-i", *env, *argv]  # fmt: skip

    def prepare(self) -> None:
        for path in (*self.read_only, *self.writable, self.cwd):
            self.local(path).mkdir(parents=True, exist_ok=True)


def plumbing_env() -> dict[str, str]:
    """What the test adds to a recipe's environment: this checkout's code (the image and /opt/warmswarm install it),
    this machine's PATH, offline and one thread per process."""
    return {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)} | CHILD_ENV


def systemd_recipe(scratch: Path, coordinator_url: str) -> Recipe:
    unit = read_unit(DEPLOY / "systemd/warmswarm-peer.service")
    service = unit["Service"]
    assert service["ProtectSystem"] == ["strict"] and service["PrivateTmp"] == ["yes"]
    home = "/var/lib/warmswarm"  # the user's home (deploy/README.md: useradd --home-dir); read-only under strict
    state = [f"/var/lib/{d}" for d in service["StateDirectory"]]
    cache = [f"/var/cache/{d}" for d in service["CacheDirectory"]]
    env = unit_environment(unit) | {
        "WARMSWARM_COORDINATOR": coordinator_url,
        "WARMSWARM_PEER_ARGS": shlex.join(LOOPBACK),
    }
    (exec_start,) = service["ExecStart"]
    argv = expand_exec(exec_start, env)
    assert argv[0].endswith("/.venv/bin/python"), argv
    argv[0] = sys.executable
    return Recipe(
        argv=argv,
        env={"HOME": home, "USER": "warmswarm"} | env | plumbing_env(),
        cwd=service["WorkingDirectory"][0],
        writable=state + cache,
        read_only=[home],
        paths={home: scratch / "home", **{c: scratch / "cache" / c.strip("/").replace("/", "_") for c in cache}},
        stage=scratch / "keep",
    )


def k8s_recipe(scratch: Path, coordinator_url: str) -> Recipe:
    (deployment,) = [
        d for d in yaml.safe_load_all((DEPLOY / "k8s/peer.yaml").read_text()) if d and d["kind"] == "Deployment"
    ]
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    steps = read_dockerfile(DEPLOY / "Dockerfile")
    home = "/home/warmswarm"  # the image's user (Dockerfile: useradd --create-home)
    writable, paths, shm = [], {home: scratch / "home"}, None
    for mount in container["volumeMounts"]:
        path, volume = mount["mountPath"], volumes[mount["name"]]
        if path == "/dev/shm":
            shm = k8s_bytes(volume["emptyDir"]["sizeLimit"])
        elif path != "/tmp" and not mount.get("readOnly"):  # /tmp: the sandbox's private tmpfs
            writable.append(path)
            paths[path] = scratch / "volumes" / mount["name"]
    args = [a.replace("http://warmswarm-coordinator:8080", coordinator_url) for a in container["args"]]
    image_env = {k: v for k, v in dockerfile_env(steps).items() if k != "PATH"}
    env = {"HOME": home} | image_env | {e["name"]: e["value"] for e in container.get("env", [])}
    workdir = [s.value for s in steps if s.keyword == "WORKDIR"][-1]
    return Recipe(
        argv=[sys.executable, "-m", *args, *LOOPBACK],  # the image's ENTRYPOINT is `tini -- python -m`
        env=env | plumbing_env(),
        cwd=workdir,
        writable=writable,
        read_only=[home],
        shm_bytes=shm,
        paths=paths,
        stage=scratch / "keep",
    )


RECIPES = {"systemd": systemd_recipe, "k8s": k8s_recipe}


def _can_sandbox() -> str | None:
    """None if this machine can make the mount namespace, else why not."""
    userns = [] if os.geteuid() == 0 else ["--map-root-user"]
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", *userns, "sh", "-c", "mount -t tmpfs tmpfs /tmp"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return None if probe.returncode == 0 else f"cannot make a mount namespace here: {probe.stderr.strip()}"


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory) -> Iterator[Coordinator]:
    require_tool("unshare")
    why = _can_sandbox()
    if why:
        if in_ci():
            pytest.fail(f"{why} (CI=true: the recipe tests must run)", pytrace=False)
        pytest.skip(why)
    root = tmp_path_factory.mktemp("recipes")
    run = prepare_run(root / "run", "recipes")
    with ProcessSet(root / "procs") as procs:
        coordinator = Coordinator(procs, run, root / "data")
        coordinator.start()
        yield coordinator


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="warmswarm-recipe-", dir="/var/tmp"))  # not /tmp: replaced in the sandbox
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("recipe_name", sorted(RECIPES))
def test_a_peer_started_as_the_recipe_starts_it_reaches_training(recipe_name, coordinator, scratch, tmp_path):
    recipe = RECIPES[recipe_name](scratch, coordinator.url)
    recipe.prepare()
    home = recipe.local(recipe.env["HOME"])
    work = peer_work_dir(coordinator.run.run_id, None, {k: recipe.rewrite(v) for k, v in recipe.env.items()})
    # what may appear in the home: the recipe's writable dirs inside it (the systemd unit's StateDirectory)
    in_home = {
        Path(p).relative_to(recipe.env["HOME"]).parts[0]
        for p in recipe.writable
        if p.startswith(recipe.env["HOME"] + "/")
    }
    with ProcessSet(tmp_path / "procs") as procs:
        peer = procs.start("peer", recipe.command(), cwd=scratch)
        peer.wait_for_line(TRAINING, timeout=400)
        log = peer.text()
    errors = [line for line in log.splitlines() if line.startswith("error:") or "Read-only file system" in line]
    assert not errors, log[-3000:]
    assert (work / "checkpoints" / "ckpt-000000" / MANIFEST).is_file(), (
        f"checkpoint 0 not in the work dir {work}: {sorted(p.name for p in scratch.rglob('*'))[:40]}\n{log[-2000:]}"
    )
    assert {p.name for p in home.iterdir()} == in_home, "the peer wrote into its (read-only) home"
