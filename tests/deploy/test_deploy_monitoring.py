"""Prometheus config, alert rules and the Grafana dashboard agree with what the coordinator really exports.

The last test is the whole path: a real Prometheus scrapes the coordinator's real HTTP ``/metrics`` and answers every
dashboard query with data — a typo in a metric, a label or the PromQL itself shows up as an empty or failed query.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
import yaml
from deploy_checks import (
    CONTRACT_METRICS,
    DEPLOY,
    coordinator_metrics,
    dashboard_targets,
    exported_metrics,
    grafana_to_promql,
    promql_names,
)
from system_tools import require_tool

from peer.children import ProcessSet

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "warmswarm.json"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
# Series that Prometheus itself adds to every scrape target; alert rules may use them.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    with coordinator_metrics(tmp_path_factory.mktemp("metrics")) as metrics:
        return exported_metrics(metrics)


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _dashboard_queries(dashboard: dict) -> list[tuple[str, str, str]]:
    """``(panel title, PromQL, legend)`` of every target."""
    return [
        (title, grafana_to_promql(t["expr"]), t.get("legendFormat", "")) for title, t in dashboard_targets(dashboard)
    ]


def _check_names(where: str, expr: str, exported, extra_series: frozenset[str] = frozenset()) -> set[str]:
    """Asserts every metric and label in ``expr`` exists; returns the families it uses."""
    by_series = {s: m for m in exported.values() for s in m.series}
    names = promql_names(expr)
    unknown = names.metrics - by_series.keys() - extra_series
    assert not unknown, f"{where}: {expr!r} names {sorted(unknown)}, not exported by coordinator.metrics"
    used = {by_series[s] for s in names.metrics if s in by_series}
    allowed = {label for m in used for label in m.labels} | {"job", "instance"}
    allowed |= {"le"} if any(m.type == "histogram" for m in used) else set()
    assert names.labels <= allowed, f"{where}: {expr!r} uses labels {sorted(names.labels - allowed)} it does not have"
    return {m.family for m in used}


def test_every_dashboard_query_names_only_exported_metrics_and_labels(dashboard, exported):
    queries = _dashboard_queries(dashboard)
    assert len(queries) >= 10
    used: set[str] = set()
    for title, expr, legend in queries:
        used |= _check_names(f"panel {title!r}", expr, exported)
        legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
        assert legend_labels <= promql_names(expr).labels, f"panel {title!r}: legend {legend!r} shows absent labels"
    missing = set(CONTRACT_METRICS) - used
    assert not missing, f"the dashboard shows no panel for {sorted(missing)}"


def test_the_contract_metrics_are_exported(exported):
    assert set(CONTRACT_METRICS) <= exported.keys(), sorted(set(CONTRACT_METRICS) - exported.keys())
    assert exported["warmswarm_rejected_records"].labels == {"reason"}
    assert exported["warmswarm_download_bytes"].labels == {"protocol"}


def test_dashboard_datasource_is_an_import_input_that_provisioning_resolves_too(dashboard):
    """Import (Grafana's "Import dashboard", grafana.com) fills ``${DS_PROMETHEUS}`` from ``__inputs``; file
    provisioning ignores ``__inputs``, so a datasource variable of the same name resolves it there, to the
    provisioned default Prometheus (grafana/grafana#10786)."""
    (wanted,) = [i for i in dashboard["__inputs"] if i["type"] == "datasource"]
    assert (wanted["name"], wanted["pluginId"]) == ("DS_PROMETHEUS", "prometheus")
    ref = "${DS_PROMETHEUS}"
    used = {(t["datasource"]["type"], t["datasource"]["uid"]) for _, t in dashboard_targets(dashboard)}
    used |= {(p["datasource"]["type"], p["datasource"]["uid"]) for p in dashboard["panels"] if "datasource" in p}
    assert used == {("prometheus", ref)}, f"every panel and query names {ref}: {used}"
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "DS_PROMETHEUS"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    provisioned = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    defaults = [d for d in provisioned["datasources"] if d.get("isDefault")]
    assert [d["type"] for d in defaults] == ["prometheus"], "the variable's default must be the provisioned Prometheus"


def test_dashboard_provider_reads_the_mounted_folder(dashboard):
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/warmswarm.yml").read_text())
    paths = {p["options"]["path"] for p in provider["providers"]}
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    volumes = compose["services"]["grafana"]["volumes"]
    mounts = {v.split(":")[1] for v in volumes if v.startswith("./grafana/dashboards")}
    assert paths == mounts, "Grafana's dashboard provider must read the folder compose mounts the JSON into"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_alert_rules_name_only_exported_metrics(exported):
    rules = [r for group in yaml.safe_load(ALERTS.read_text())["groups"] for r in group["rules"]]
    assert rules
    for rule in rules:
        _check_names(f"alert {rule['alert']}", rule["expr"], exported, frozenset(PROMETHEUS_SERIES))


def test_promtool_accepts_the_prometheus_config_and_its_rules():
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr, "alerts.yml must be loaded by the config"


def test_exports_failing_alert_fires_for_a_form_that_only_fails(tmp_path):
    """``promtool test rules`` on the deployed rule: int8 fails 3 times and is never built (fires); bf16 fails 3 times
    but is built in between (a flaky form that recovers: silent); pruned failed once (a one-off: silent)."""
    promtool = require_tool("promtool")
    shutil.copy(ALERTS, tmp_path / ALERTS.name)
    (rule,) = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]
               if r["alert"] == "WarmswarmExportsFailing"]  # fmt: skip
    fails, built = "warmswarm_export_failures_total", "warmswarm_exports_built_total"
    series = {  # one sample a minute from 0m; the counters start at zero (Store.declare_export_forms)
        f'{fails}{{form="int8"}}': "0 0 1 1 2 2 3 3x60", f'{built}{{form="int8"}}': "0x70",
        f'{fails}{{form="bf16"}}': "0 0 1 1 2 2 3 3x60", f'{built}{{form="bf16"}}': "0 0 0 1 1x66",
        f'{fails}{{form="pruned"}}': "0 1x68", f'{built}{{form="pruned"}}': "0x70",
    }  # fmt: skip
    expected = {"labels": {"alertname": rule["alert"], "form": "int8", **rule["labels"]},
                "summary": rule["annotations"]["summary"].replace("{{ $labels.form }}", "int8")}  # fmt: skip
    tests = {
        "rule_files": [ALERTS.name],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": k, "values": v} for k, v in series.items()],
            "alert_rule_test": [
                {"eval_time": "10m", "alertname": rule["alert"], "exp_alerts": []},  # pending: not for 10 minutes yet
                {"eval_time": "30m", "alertname": rule["alert"], "exp_alerts": [{
                    "exp_labels": {k: v for k, v in expected["labels"].items() if k != "alertname"},
                    "exp_annotations": {"summary": expected["summary"]},
                }]},
            ],
        }],
    }  # fmt: skip
    path = tmp_path / "alerts-test.yml"
    path.write_text(yaml.safe_dump(tests))
    result = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_parses_every_dashboard_query(dashboard, tmp_path):
    promtool = require_tool("promtool")
    queries = _dashboard_queries(dashboard)
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:q{i}", "expr": q} for i, (_, q, _) in enumerate(queries)],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _query(base: str, expr: str) -> dict:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@pytest.mark.timeout(120)
def test_real_prometheus_answers_every_dashboard_query_from_coordinator_metrics(dashboard, tmp_path):
    prometheus = require_tool("prometheus")
    from coordinator.api.http import RunInfo, create_http_app, start_http_server

    with coordinator_metrics(tmp_path) as metrics:
        (tmp_path / "checkpoints").mkdir()
        app = create_http_app(metrics.store, tmp_path / "checkpoints", RunInfo("deploy-check", {}), metrics)
        server = start_http_server(app, host="127.0.0.1", port=0)
        config = tmp_path / "prometheus.yml"
        # deploy's own config and alert rules, with only the target and the pace changed.
        deployed = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
        deployed["global"].update(scrape_interval="1s", evaluation_interval="1s")
        for job in deployed["scrape_configs"]:
            job["static_configs"] = [{"targets": [f"127.0.0.1:{server.port}"]}]
        for rule_file in deployed.get("rule_files", []):
            shutil.copy(PROMETHEUS_CONFIG.parent / rule_file, tmp_path / rule_file)
        config.write_text(yaml.safe_dump(deployed))
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        argv = [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}"]  # fmt: skip
        procs = ProcessSet(tmp_path, grace=20)
        try:
            prom = procs.start("prometheus", argv)
            # rate() needs two samples inside its window.
            deadline = time.monotonic() + 90
            while True:
                assert prom.alive(), f"prometheus exited: {prom.tail(2000)}"
                try:
                    ready = _query(base, "count_over_time(warmswarm_alive_peers[1m]) >= 2")["data"]["result"]
                except OSError:
                    ready = []
                if ready:
                    break
                assert time.monotonic() < deadline, "prometheus did not scrape the coordinator's metrics in 90 s"
                time.sleep(0.5)
            empty = []
            for title, expr, _ in _dashboard_queries(dashboard):
                answer = _query(base, expr)
                assert answer["status"] == "success", f"panel {title!r}: {expr!r}: {answer}"
                if not answer["data"]["result"]:
                    empty.append(f"{title}: {expr}")
            assert not empty, "queries without data:\n" + "\n".join(empty)
            up = _query(base, 'up{job="warmswarm-coordinator"}')["data"]["result"]
            assert up and up[0]["value"][1] == "1"
            deadline = time.monotonic() + 30
            while True:  # every alert rule evaluated at least once, without an error
                with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=10) as response:
                    rules = [r for g in json.load(response)["data"]["groups"] for r in g["rules"]]
                evaluated = [r for r in rules if not r.get("lastEvaluation", "0001").startswith("0001")]
                if len(evaluated) == len(rules) > 0:
                    break
                assert time.monotonic() < deadline, f"alert rules not evaluated: {rules}"
                time.sleep(0.5)
            broken = [f"{r['name']}: {r.get('lastError')}" for r in rules if r["health"] != "ok"]
            assert not broken, broken
        finally:
            procs.close()
            server.stop()
