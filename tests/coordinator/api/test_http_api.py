"""The HTTP server: JSON API, /metrics text, and checkpoint files with Range/ETag (checked with httpx and curl)."""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess

import httpx
import pytest


def test_json_api_reports_the_store_and_the_visible_checkpoints(coordinator):
    with httpx.Client(base_url=coordinator.url, timeout=10) as c:
        run = c.get("/api/v1/run").json()
        assert run["run_id"] == "api-test-run" and run["initial_peers"] and run["join_command"]
        progress = c.get("/api/v1/progress").json()
        assert progress["global_step"] == coordinator.store.progress().global_step == 445
        assert progress["alive_peers"] == 4 and progress["samples_per_second"] == pytest.approx(400.0)
        peers = c.get("/api/v1/peers").json()["peers"]
        assert [p["name"] for p in peers][:2] == ["dave-h100", "carol-laptop"]  # most samples first
        history = c.get("/api/v1/history").json()["history"]
        assert len(history) == 90 and history[0]["time"] < history[-1]["time"]
        assert len(c.get("/api/v1/history", params={"since": history[-10]["time"]}).json()["history"]) == 9
        ckpts = c.get("/api/v1/checkpoints").json()["checkpoints"]
        assert [k["name"] for k in ckpts] == ["ckpt-000060", "ckpt-000120"]  # .tmp and manifest-less are hidden
        assert {f["path"] for f in ckpts[-1]["files"]} >= {"model.safetensors", "generator/config.json"}
        page = c.get("/")
        assert page.status_code == 200 and "warmswarm" in page.text


def test_metrics_endpoint_exports_the_contract_names(coordinator):
    text = httpx.get(f"{coordinator.url}/metrics", timeout=10).text
    expected = [
        "warmswarm_alive_peers 4.0",
        "warmswarm_global_step 445.0",
        "warmswarm_samples_per_second 400.0",
        "warmswarm_checkpoints_total 2.0",
        "warmswarm_checkpoint_save_seconds_count 2.0",
        "warmswarm_last_checkpoint_step 120.0",
        'warmswarm_rejected_records_total{reason="bad_signature"} 3.0',
        'warmswarm_download_bytes_total{protocol="http"}',
        "warmswarm_samples_total",
        "warmswarm_loss",
    ]
    for line in expected:
        assert line in text, line
    label_names = set(re.findall(r"[{,](\w+)=", text))
    assert label_names <= {"reason", "protocol", "le", "task", "metric"}, label_names  # no per-peer labels


def test_metrics_carry_the_newest_evaluated_checkpoints_scores(coordinator):
    """ckpt-000060 is the newest evaluated one (ckpt-000120's evaluation failed once): its scores by task, metric."""
    text = httpx.get(f"{coordinator.url}/metrics", timeout=10).text
    values = dict(re.findall(r"^(warmswarm_eval_\S+) (\S+)$", text, re.MULTILINE))
    assert float(values["warmswarm_eval_step"]) == 60
    assert float(values['warmswarm_eval_score{metric="accuracy",task="polarity"}']) == pytest.approx(0.7)
    assert float(values['warmswarm_eval_score_sd{metric="accuracy",task="polarity"}']) == pytest.approx(0.01414, 1e-3)
    assert float(values['warmswarm_eval_score{metric="spearman",task="lee"}']) == pytest.approx(0.6)
    assert float(values['warmswarm_eval_score{metric="pearson",task="lee"}']) == pytest.approx(0.56)
    assert float(values['warmswarm_eval_score{metric="disc_auc",task="heldout"}']) == pytest.approx(0.7)
    assert float(values["warmswarm_eval_failures_total"]) == 1
    assert len([k for k in values if k.startswith("warmswarm_eval_score{")]) == 6  # 3 tasks, Pearson, 2 held-out


def test_evaluations_api_and_each_checkpoints_entry_carry_the_scores(coordinator):
    with httpx.Client(base_url=coordinator.url, timeout=10) as c:
        evaluations = c.get("/api/v1/evaluations").json()["evaluations"]
        ckpts = {k["name"]: k for k in c.get("/api/v1/checkpoints").json()["checkpoints"]}
    assert [(e["checkpoint"], e["step"], e["done"]) for e in evaluations] == [
        ("ckpt-000030", 30, True), ("ckpt-000060", 60, True), ("ckpt-000120", 120, False)]  # fmt: skip
    polarity = next(x for x in evaluations[0]["scores"] if x["task"] == "polarity")
    assert polarity["mean"] == pytest.approx(0.6)  # pruned ckpt-000030: still in the history
    assert (polarity["metric"], polarity["seeds"], polarity["role"]) == ("accuracy", [0, 1], "checkpoint")
    headlines = {(x["task"], x["metric"]) for x in evaluations[0]["scores"] if x["headline"]}
    assert headlines == {("polarity", "accuracy"), ("newsgroups", "accuracy"), ("lee", "spearman")}
    failed = evaluations[2]
    assert (failed["attempts"], failed["error"], failed["scores"]) == (1, "killed by SIGKILL", [])
    assert ckpts["ckpt-000060"]["evaluation"] == evaluations[1]
    assert ckpts["ckpt-000120"]["evaluation"] == failed


def test_the_served_card_has_the_scores_and_the_verified_card_is_untouched(coordinator):
    ckpt = coordinator.checkpoints_dir / "ckpt-000060"
    (ckpt / "README.md").write_text("the card saved with the checkpoint\n")  # as if listed in the manifest
    with httpx.Client(base_url=coordinator.url, timeout=10) as c:
        card = c.get("/api/v1/checkpoints/ckpt-000060/card")
        assert card.status_code == 200 and card.headers["content-type"].startswith("text/markdown")
        assert "model-index:" in card.text and "accuracy (mean of 2 seeds" in card.text
        assert "value: 0.7\n" in card.text  # polarity's mean, as the model-index's metric value
        unevaluated = c.get("/api/v1/checkpoints/ckpt-000120/card")
        assert unevaluated.status_code == 200 and "model-index" not in unevaluated.text
        assert "Not evaluated yet" in unevaluated.text
        assert c.get("/api/v1/checkpoints/latest/card").text == unevaluated.text
        assert c.get("/api/v1/checkpoints/ckpt-000999/card").status_code == 404
        assert c.get("/checkpoints/ckpt-000060/evaluation.json").status_code == 404  # not a checkpoint file
    assert (ckpt / "README.md").read_text() == "the card saved with the checkpoint\n"


def test_range_requests_resume_and_etag_is_the_manifest_sha256(coordinator):
    data = (coordinator.checkpoints_dir / "ckpt-000120" / "model.safetensors").read_bytes()
    url = f"{coordinator.url}/checkpoints/ckpt-000120/model.safetensors"
    with httpx.Client(timeout=10) as c:
        full = c.get(url)
        assert full.status_code == 200 and full.content == data
        assert full.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
        assert full.headers["repr-digest"] == f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"
        head = c.head(url)
        assert head.status_code == 200 and int(head.headers["content-length"]) == len(data) and not head.content
        assert head.headers["etag"] == full.headers["etag"] and head.headers["accept-ranges"] == "bytes"
        part = c.get(url, headers={"Range": "bytes=1000-1999"})
        assert part.status_code == 206 and part.content == data[1000:2000]
        assert part.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
        tail = c.get(url, headers={"Range": f"bytes={len(data) - 10}-", "If-Range": full.headers["etag"]})
        assert tail.status_code == 206 and tail.content == data[-10:]
        stale = c.get(url, headers={"Range": "bytes=10-", "If-Range": '"0000"'})
        assert stale.status_code == 200 and len(stale.content) == len(data)  # a changed file restarts from 0
        bad = c.get(url, headers={"Range": f"bytes={len(data) + 5}-"})
        assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{len(data)}"
        before = coordinator.metrics.download_bytes_total.labels("http")._value.get()
        c.get(url, headers={"Range": "bytes=0-99"})
        assert coordinator.metrics.download_bytes_total.labels("http")._value.get() - before == 100


def test_if_none_match_with_the_current_etag_gets_304_and_no_body(coordinator):
    data = (coordinator.checkpoints_dir / "ckpt-000120" / "model.safetensors").read_bytes()
    url = f"{coordinator.url}/checkpoints/ckpt-000120/model.safetensors"
    etag = f'"{hashlib.sha256(data).hexdigest()}"'
    with httpx.Client(timeout=10) as c:
        before = coordinator.metrics.download_bytes_total.labels("http")._value.get()
        matching = [etag, f'"0000", W/{etag}', "*"]  # a list, a weak match (RFC 9110 weak comparison), any
        for tag in matching:
            r = c.get(url, headers={"If-None-Match": tag})
            assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == etag, tag
            assert "content-length" not in r.headers or r.headers["content-length"] == "0"
        assert c.head(url, headers={"If-None-Match": etag}).status_code == 304
        # If-None-Match is evaluated before Range: the client already holds the whole file
        assert c.get(url, headers={"If-None-Match": etag, "Range": "bytes=0-99"}).status_code == 304
        assert coordinator.metrics.download_bytes_total.labels("http")._value.get() == before  # nothing was sent
        other = c.get(url, headers={"If-None-Match": '"0000"', "Range": "bytes=0-99"})
        assert other.status_code == 206 and other.content == data[:100]  # a different ETag: Range still works
        assert c.get(url, headers={"If-None-Match": '"0000"'}).content == data
        assert c.get(f"{coordinator.url}/checkpoints/latest/model.safetensors",
                     headers={"If-None-Match": etag}).status_code == 304  # fmt: skip


@pytest.mark.parametrize(
    "path", ["/", "/static/dashboard.js", "/static/vendor/uPlot.iife.min.js", "/checkpoints/ckpt-000120/manifest.json"]
)
def test_every_route_with_an_etag_answers_a_match_with_304(coordinator, path):
    with httpx.Client(base_url=coordinator.url, timeout=10) as c:
        first = c.get(path)
        assert first.status_code == 200 and first.content and first.headers["etag"]
        assert first.headers["cache-control"] == "no-cache"  # browsers revalidate (a 304) instead of guessing
        again = c.get(path, headers={"If-None-Match": first.headers["etag"]})
        assert again.status_code == 304 and again.content == b"", (again.status_code, again.headers)
        assert again.headers["etag"] == first.headers["etag"]
        assert c.get(path, headers={"If-None-Match": '"0000"'}).content == first.content


@pytest.mark.parametrize(
    "path, status",
    [
        ("/checkpoints/ckpt-000120/../../coordinator.db", 400),
        ("/checkpoints/ckpt-000120/%2e%2e/%2e%2e/coordinator.db", 400),
        ("/checkpoints/ckpt-000120/generator/../config.json", 400),
        ("/checkpoints/..%2Fdata/config.json", 404),
        ("/checkpoints/ckpt-000180.tmp/config.json", 404),
        ("/checkpoints/ckpt-000240/config.json", 404),
        ("/checkpoints/ckpt-000120/not-in-manifest.bin", 404),
    ],
)
def test_paths_outside_a_checkpoint_are_rejected(coordinator, path, status):
    # curl --path-as-is sends the path verbatim (httpx and browsers would normalise the dots away).
    cmd = ["curl", "-s", "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}", coordinator.url + path]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert out.stdout == str(status)


@pytest.mark.requires_tool("curl")
def test_curl_continue_at_resumes_a_cut_download(coordinator, tmp_path):
    data = (coordinator.checkpoints_dir / "ckpt-000120" / "model.safetensors").read_bytes()
    dest = tmp_path / "model.safetensors"
    dest.write_bytes(data[: len(data) // 2])  # what a cut transfer left behind
    url = f"{coordinator.url}/checkpoints/ckpt-000120/model.safetensors"
    subprocess.run(["curl", "-sSf", "-C", "-", "-o", str(dest), url], check=True, timeout=60)
    assert dest.read_bytes() == data
