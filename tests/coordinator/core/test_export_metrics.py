"""The background exporter's builds and failures as Prometheus counters: counted in the store for the run (so a
restart or a checkpoint's pruning never lowers them), zero from the start for the forms a coordinator builds, and
rendered as ``warmswarm_exports_built_total{form}`` / ``warmswarm_export_failures_total{form}``."""

from prometheus_client.parser import text_string_to_metric_families

from coordinator.metrics import CoordinatorMetrics
from coordinator.store import ExportBuilds, Store


def _samples(metrics: CoordinatorMetrics) -> dict[tuple[str, str], float]:
    text = metrics.render().decode()
    return {(s.name, s.labels["form"]): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name.startswith(("warmswarm_exports_built", "warmswarm_export_failures"))
            and s.name.endswith("_total")}  # fmt: skip


def test_export_counts_are_per_form_survive_a_restart_and_render_as_counters(tmp_path):
    path = tmp_path / "coordinator.db"
    with Store(path) as store:
        store.open_run("run", {})
        store.declare_export_forms(("bf16", "int8"))
        assert _samples(CoordinatorMetrics(store)) == {
            ("warmswarm_exports_built_total", "bf16"): 0, ("warmswarm_exports_built_total", "int8"): 0,
            ("warmswarm_export_failures_total", "bf16"): 0, ("warmswarm_export_failures_total", "int8"): 0}  # fmt: skip
        store.count_export_builds(["bf16"], ["int8"])
        store.count_export_builds(["bf16", "int8"], [])
        store.count_export_builds([], ["int8", "pruned"])
    with Store(path) as store:  # a restarted coordinator: declaring its forms again resets nothing
        store.open_run("run", {})
        store.declare_export_forms(("bf16", "int8"))
        assert store.export_builds() == {"bf16": ExportBuilds(2, 0), "int8": ExportBuilds(1, 2),
                                         "pruned": ExportBuilds(0, 1)}  # fmt: skip
        got = _samples(CoordinatorMetrics(store))
    assert got[("warmswarm_exports_built_total", "bf16")] == 2 and got[("warmswarm_export_failures_total", "int8")] == 2
    assert got[("warmswarm_export_failures_total", "pruned")] == 1 and len(got) == 6
