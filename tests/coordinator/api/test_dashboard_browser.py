"""The dashboard in headless Debian Chromium (driven by Playwright), served by a real coordinator app: it shows the
live numbers and follows the store on its own, draws its charts with a gap where the coordinator was down (canvas
pixels checked), never makes the page scroll sideways from 400 to 1920 px wide, and applies the display rules
(offline peers show no samples/s, no ETA without a live peer, one row per volunteer, the join line).

Set WARMSWARM_DASHBOARD_PNG=path to also save a screenshot of the small run at 1440 px (docs/dashboard.png), and
WARMSWARM_DASHBOARD_PNG_DIR=dir to save the crowded run at 400, 1400 and 1920 px (docs/dashboard-<width>.png)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from api_fixtures import GROWING_SWITCH, crowded_history_times, growing_history_times
from system_tools import require_module

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.requires_tool("chromium")
playwright = require_module("playwright.sync_api")

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]  # fmt: skip
SCREENSHOT_WIDTHS = (400, 1400, 1920)  # the widths of the issue, in docs/
WIDTHS = (400, 768, 1000, 1001, 1400, 1920)  # and either side of the one-column breakpoint
CHARTS = ("loss-chart", "sps-chart", "peers-chart")

# Counts, per device-pixel column of a chart's canvas, the pixels of the chart's line colour (its data-color).
LINE_COLUMNS = """(id) => {
  const host = document.getElementById(id), c = host.querySelector("canvas");
  const [r, g, b] = host.dataset.color.match(/[0-9a-f]{2}/gi).map((h) => parseInt(h, 16));
  const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  const cols = new Array(c.width).fill(0);
  for (let i = 0; i < px.length; i += 4) {
    if (px[i + 3] > 200 && Math.abs(px[i] - r) < 8 && Math.abs(px[i + 1] - g) < 8 && Math.abs(px[i + 2] - b) < 8)
      cols[(i / 4) % c.width]++;
  }
  return cols;
}"""

# Counts the pixels of one colour (#rrggbb) on a chart's canvas (the scores chart draws a line per task).
COLOR_PIXELS = """([id, hex]) => {
  const c = document.getElementById(id).querySelector("canvas");
  const [r, g, b] = hex.match(/[0-9a-f]{2}/gi).map((h) => parseInt(h, 16));
  const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < px.length; i += 4) {
    if (px[i + 3] > 200 && Math.abs(px[i] - r) < 8 && Math.abs(px[i + 1] - g) < 8 && Math.abs(px[i + 2] - b) < 8) n++;
  }
  return n;
}"""

# Counts, per device-pixel column of a chart's canvas, the pixels of the growth switch marker's colour.
SWITCH_COLUMNS = LINE_COLUMNS.replace("host.dataset.color", "host.dataset.switchColor")

# The device-pixel column of each unix time on a chart: uPlot's plotting area is its .u-over element, and its x
# scale spans the history's first to last time.
TIME_TO_COLUMN = """([id, first, last, times]) => {
  const host = document.getElementById(id), c = host.querySelector("canvas");
  const cr = c.getBoundingClientRect(), over = host.querySelector(".u-over").getBoundingClientRect();
  const k = c.width / cr.width;
  return times.map((t) => Math.round((over.left - cr.left + ((t - first) / (last - first)) * over.width) * k));
}"""

# Layout facts at the current width: the page's own sideways scroll, cards that stick out of the viewport, and
# tables wider than their card whose wrapper cannot scroll them (clipped).
LAYOUT = """() => {
  const vw = window.innerWidth;
  const out = [...document.querySelectorAll("section > *")].map((e) => e.getBoundingClientRect())
    .filter((r) => r.left < -0.5 || r.right > vw + 0.5).length;
  const clipped = [...document.querySelectorAll("table")].filter((t) => {
    const box = t.parentElement;
    return box.scrollWidth > box.clientWidth + 1 && !["auto", "scroll"].includes(getComputedStyle(box).overflowX);
  }).map((t) => t.id);
  return {scrollWidth: document.documentElement.scrollWidth, innerWidth: vw, out, clipped};
}"""


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS, timeout=60_000)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def open_page(browser):
    """Opens a fresh page of the given viewport width; every page is closed (with its context) afterwards."""
    contexts = []

    def _open(width: int = 1440, height: int = 900):
        ctx = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
        contexts.append(ctx)
        return ctx.new_page()

    yield _open
    for ctx in contexts:
        ctx.close()


def load(page, url: str, refresh_ms: int = 60_000, refreshes: int = 1) -> None:
    page.goto(f"{url}/?refresh={refresh_ms}", wait_until="load")
    page.wait_for_function(f"Number(document.body.dataset.refreshed || 0) >= {refreshes}", timeout=30_000)


def test_dashboard_shows_live_numbers_and_draws_the_charts(coordinator, open_page):
    page = open_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    page.on("request", lambda r: r.url.startswith(coordinator.url) or errors.append(f"not offline: {r.url}"))
    page.goto(f"{coordinator.url}/?refresh=300", wait_until="load")
    page.wait_for_function("document.getElementById('global-step').textContent === '445'", timeout=30_000)
    assert page.text_content("#alive-peers") == "4"
    assert page.text_content("#samples-per-second") == "400.0"
    assert page.text_content("#run-id") == "api-test-run"
    assert page.text_content("#eta") not in ("–", "")
    rows = page.locator("#leaderboard tbody tr")
    assert rows.count() == 4 and "dave-h100" in rows.nth(0).text_content()
    links = page.locator("#checkpoints a")
    hrefs = {links.nth(i).get_attribute("href") for i in range(links.count())}
    assert "/checkpoints/ckpt-000120/model.safetensors" in hrefs
    for chart in CHARTS:
        assert sum(page.evaluate(LINE_COLUMNS, chart)) > 200, chart  # a drawn curve, not an empty chart

    if os.environ.get("WARMSWARM_DASHBOARD_PNG"):
        page.screenshot(path=os.environ["WARMSWARM_DASHBOARD_PNG"], full_page=True)

    coordinator.store.record_progress(460, 5, 512.5, 1.875)  # the monitor's next pass
    page.wait_for_function("document.getElementById('global-step').textContent === '460'", timeout=30_000)
    assert page.text_content("#alive-peers") == "5" and page.text_content("#loss") == "1.875"
    assert not errors, errors


def test_scores_chart_draws_each_task_over_steps_and_follows_new_evaluations(coordinator, open_page):
    """The fixture's evaluations: ckpt-000030 (pruned since) and ckpt-000060 done, ckpt-000120 failed once."""
    from api_fixtures import evaluation_report

    from coordinator.evaluator import report_scores

    page = open_page(1400)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    load(page, coordinator.url, refresh_ms=300)
    assert page.get_attribute("#scores-chart", "data-steps") == "30 60"
    legend = page.text_content("#scores-chart .u-legend")
    for key in ("polarity accuracy", "newsgroups accuracy", "lee spearman"):
        assert key in legend, legend
    assert "pearson" not in legend and "heldout" not in legend  # headline metrics only, no held-out losses
    colors = page.get_attribute("#scores-chart", "data-colors").split()
    assert len(colors) == 3 and len(set(colors)) == 3
    for color in colors:
        assert page.evaluate(COLOR_PIXELS, ["scores-chart", color]) > 100, color  # two points and a line each
    rows = {r.locator("td").first.text_content(): r for r in page.locator("#checkpoints tbody tr").all()}
    assert "polarity 0.700" in rows["ckpt-000060"].locator("td.scores").text_content()
    failed = rows["ckpt-000120"].locator("td.scores")
    assert failed.text_content() == "failed ×1" and failed.get_attribute("title") == "killed by SIGKILL"

    report = evaluation_report(120, 1.0)  # the retry succeeds
    coordinator.store.record_evaluation("ckpt-000120", 120, report_scores(report, "ckpt-000120", 120), 40.0)
    page.wait_for_function("document.getElementById('scores-chart').dataset.steps === '30 60 120'", timeout=30_000)
    cell = page.locator("#checkpoints tbody tr").first.locator("td.scores")  # newest first
    page.wait_for_function(
        "document.querySelector('#checkpoints tbody tr td.scores').textContent.includes('polarity 0.800')",
        timeout=30_000,
    )
    assert "lee 0.700" in cell.text_content()
    assert not errors, errors


def test_checkpoints_show_their_exports_as_downloads_with_the_command(coordinator, open_page):
    """The fixture's ckpt-000120 has bf16 and int8 exports; ckpt-000060 none yet. A form's summary is its name and
    size, it opens to the download command for that form and a link per file, and each link serves the file."""
    page = open_page(1400)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    load(page, coordinator.url)
    rows = {r.locator("td").first.text_content(): r for r in page.locator("#checkpoints tbody tr").all()}
    assert rows["ckpt-000060"].locator("td.exports").text_content() == "none yet"
    listed = {c["name"]: c for c in page.evaluate("fetch('/api/v1/checkpoints').then((r) => r.json())")["checkpoints"]}
    exports = listed["ckpt-000120"]["exports"]
    forms = rows["ckpt-000120"].locator("td.exports details")
    assert [forms.nth(i).get_attribute("data-form") for i in range(forms.count())] == ["bf16", "int8"]
    for i, form in enumerate(("bf16", "int8")):
        box = forms.nth(i)
        size = sum(f["size"] for f in exports[form]["files"])  # 3 << 19 or 3 << 18 weight bytes + 4 small files
        shown = f"{size / (1 << 20):.1f} MiB" if size >= 1 << 20 else f"{size / 1024:.1f} KiB"
        assert box.locator("summary").text_content() == f"{form} · {shown}"
        box.locator("summary").click()
        command = f"python -m coordinator download --from {coordinator.url} --checkpoint ckpt-000120 --form {form}"
        assert box.locator("code").text_content() == f"{command} --out ./ckpt-000120-{form}"
        links = box.locator("a")
        hrefs = sorted(links.nth(j).get_attribute("href") for j in range(links.count()))
        assert hrefs == sorted(f"/exports/ckpt-000120/{form}/{f['path']}" for f in exports[form]["files"])
    weights = forms.nth(1).locator("a", has_text="model.safetensors")
    assert weights.is_visible()
    got = page.evaluate("(u) => fetch(u).then((r) => r.arrayBuffer()).then((b) => b.byteLength)",
                        weights.get_attribute("href"))  # fmt: skip
    assert got == 3 << 18
    assert page.text_content("#export-cmd") == (
        f"python -m coordinator download --from {coordinator.url} --checkpoint ckpt-000120 --form bf16 "
        "--out ./ckpt-000120-bf16"
    )
    assert not errors, errors


def test_dashboard_says_when_the_coordinator_is_gone(coordinator, open_page):
    page = open_page()
    page.goto(f"{coordinator.url}/?refresh=300", wait_until="load")
    page.wait_for_function("document.getElementById('status').textContent === 'live'", timeout=30_000)
    coordinator.http.stop()
    page.wait_for_function("document.getElementById('status').textContent.startsWith('coordinator unreachable')",
                           timeout=30_000)  # fmt: skip
    assert page.text_content("#global-step") == "445"  # the last numbers stay on screen


@pytest.mark.parametrize("width", WIDTHS)
def test_no_sideways_page_scroll_with_long_names_and_many_checkpoints(crowded, open_page, width):
    page = open_page(width)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    load(page, crowded.url)
    assert page.locator("#checkpoints tbody tr").count() == 6 and page.locator("#leaderboard tbody tr").count() == 8
    assert page.locator("#checkpoints td.exports details").count() == 6 * 5
    page.locator("#checkpoints tbody tr").first.locator("td.exports summary").first.click()  # a command shown
    layout = page.evaluate(LAYOUT)
    if os.environ.get("WARMSWARM_DASHBOARD_PNG_DIR") and width in SCREENSHOT_WIDTHS:
        page.screenshot(path=str(Path(os.environ["WARMSWARM_DASHBOARD_PNG_DIR"]) / f"dashboard-{width}.png"),
                        full_page=True)  # fmt: skip
    assert layout["scrollWidth"] <= layout["innerWidth"], layout
    assert layout["out"] == 0 and layout["clipped"] == [], layout
    assert not errors, errors


def test_charts_leave_a_gap_where_the_coordinator_was_down(crowded, open_page):
    page = open_page(1400)
    load(page, crowded.url)
    times, (down, up) = crowded_history_times(crowded.now)
    for chart in CHARTS:
        cols = page.evaluate(LINE_COLUMNS, chart)
        first, down_px, up_px, last = page.evaluate(TIME_TO_COLUMN, [chart, times[0], times[-1],
                                                                     [times[0], down, up, times[-1]]])  # fmt: skip
        assert up_px - down_px > 100, (chart, down_px, up_px)  # the downtime is 1/3 of the chart
        assert sum(cols[down_px + 4 : up_px - 3]) == 0, (chart, cols[down_px : up_px + 1])  # nothing drawn across it
        drawn = cols[first + 1 : down_px] + cols[up_px + 1 : last]
        assert all(drawn), (chart, drawn.index(0))  # no false gaps: each side is one unbroken line


def test_display_rules_offline_peers_eta_rows_and_join_line(crowded, open_page):
    page = open_page(1400)
    load(page, crowded.url, refresh_ms=200, refreshes=3)  # rows must not pile up across refreshes
    peers = page.evaluate("fetch('/api/v1/peers').then((r) => r.json())")["peers"]
    rows = page.locator("#leaderboard tbody tr")
    assert rows.count() == len(peers) == 8
    assert page.text_content("#join-cmd") == crowded.join_command
    for i, p in enumerate(peers):
        row = rows.nth(i)
        assert p["name"] in row.text_content()
        sps = row.locator("td.sps").text_content()
        assert (sps != "") == p["alive"], (p["name"], p["alive"], sps)  # offline: blank, not a stale rate
    assert page.text_content("#alive-peers") == "5" and page.text_content("#eta") not in ("–", "")
    assert "banned" in rows.nth([p["banned"] for p in peers].index(True)).text_content()

    crowded.store.record_progress(241, 0, 0.0, 1.5)  # every peer gone: a step rate from history is no ETA
    page.wait_for_function("document.getElementById('alive-peers').textContent === '0'", timeout=30_000)
    assert page.text_content("#eta") == "–"


def test_a_fresh_run_shows_empty_charts_and_no_eta(tmp_path, open_page):
    from coordinator.api.http import RunInfo, create_http_app, start_http_server
    from coordinator.store import Store

    store = Store(tmp_path / "coordinator.db")
    store.open_run("fresh-run", {"run_id": "fresh-run"}, total_steps=1000)
    http = start_http_server(create_http_app(store, tmp_path / "checkpoints", RunInfo("fresh-run", {})), "127.0.0.1", 0)
    try:
        page = open_page(1400)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        load(page, f"http://127.0.0.1:{http.port}")
        assert page.text_content("#status") == "live" and page.text_content("#eta") == "–"
        for chart in CHARTS:
            assert "no-data" in page.get_attribute(f"#{chart}", "class")  # says "no data yet"
            assert sum(page.evaluate(LINE_COLUMNS, chart)) == 0
        assert "no-data" in page.get_attribute("#scores-chart", "class")  # no checkpoint evaluated yet
        assert page.locator("#leaderboard tbody tr").count() == 0 and page.locator("#checkpoints tbody tr").count() == 0
        assert not errors, errors
    finally:
        http.stop()
        store.close()


def test_every_chart_marks_the_growth_switch(growing, coordinator, open_page):
    """A run that grew mid-run: each time chart draws a dashed vertical line at the time of the history's first
    point in the new stage, the scores chart one at its step, and the checkpoints table says the new stage. A run
    that never switched draws no marker."""
    page = open_page(1400)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    load(page, growing.url)
    times = growing_history_times(growing.now)
    switch = times[GROWING_SWITCH]
    for chart in CHARTS:
        assert float(page.get_attribute(f"#{chart}", "data-switches")) == pytest.approx(switch, abs=1e-3)
        cols = page.evaluate(SWITCH_COLUMNS, chart)
        (at,) = page.evaluate(TIME_TO_COLUMN, [chart, times[0], times[-1], [switch]])
        near = cols[at - 2 : at + 3]
        assert max(near) >= 40, (chart, near)  # a dashed line over most of the plot's height
        # nothing of the marker's colour elsewhere but its label, just right of the line
        assert sum(cols[: at - 2]) == 0 and sum(cols[at + 80 :]) == 0, chart
    assert page.get_attribute("#scores-chart", "data-switches") == str(2 * GROWING_SWITCH)
    assert max(page.evaluate(SWITCH_COLUMNS, "scores-chart")) >= 40
    stages = {r.locator("td").first.text_content(): r.get_attribute("data-stage")
              for r in page.locator("#checkpoints tbody tr").all()}  # fmt: skip
    assert stages == {"ckpt-000040": "0", "ckpt-000090": "0", "ckpt-000150": "1"}
    assert "stage 1" in page.locator("#checkpoints tbody tr").first.text_content()  # newest first

    plain = open_page(1400)
    load(plain, coordinator.url)
    for chart in (*CHARTS, "scores-chart"):
        assert plain.get_attribute(f"#{chart}", "data-switches") == ""
        assert sum(plain.evaluate(SWITCH_COLUMNS, chart)) == 0, chart
    assert not errors, errors
