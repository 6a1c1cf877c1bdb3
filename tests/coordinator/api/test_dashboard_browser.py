"""The dashboard in headless Debian Chromium (driven by Playwright): it shows the live numbers, follows a change
in the store on its own, and draws its charts (canvas pixels checked). Set WARMSWARM_DASHBOARD_PNG=path to also
save a screenshot (that is how docs/dashboard.png is made)."""

from __future__ import annotations

import os
import shutil

import pytest
from system_tools import require_module

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.requires_tool("chromium")
playwright = require_module("playwright.sync_api")

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]  # fmt: skip

# Counts pixels of the chart's line colour, and all painted pixels, on a canvas.
COUNT_PIXELS = """(id) => {
  const c = document.getElementById(id);
  const [r, g, b] = c.dataset.color.match(/[0-9a-f]{2}/gi).map((h) => parseInt(h, 16));
  const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  const near = (i) => Math.abs(px[i] - r) < 8 && Math.abs(px[i + 1] - g) < 8 && Math.abs(px[i + 2] - b) < 8;
  let line = 0, painted = 0;
  for (let i = 0; i < px.length; i += 4) {
    if (px[i + 3] > 0) painted++;
    if (px[i + 3] > 200 && near(i)) line++;
  }
  return {line, painted, total: px.length / 4};
}"""


@pytest.fixture
def page(tmp_path):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS, timeout=60_000)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 900}, device_scale_factor=1)
            yield context.new_page()
        finally:
            browser.close()


def test_dashboard_shows_live_numbers_and_draws_the_charts(coordinator, page):
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
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
    for chart in ("loss-chart", "sps-chart", "peers-chart"):
        px = page.evaluate(COUNT_PIXELS, chart)
        assert px["line"] > 200, (chart, px)  # a drawn curve, not a blank or an empty-state canvas

    if os.environ.get("WARMSWARM_DASHBOARD_PNG"):
        page.screenshot(path=os.environ["WARMSWARM_DASHBOARD_PNG"], full_page=True)

    coordinator.store.record_progress(460, 5, 512.5, 1.875)  # the monitor's next pass
    page.wait_for_function("document.getElementById('global-step').textContent === '460'", timeout=30_000)
    assert page.text_content("#alive-peers") == "5" and page.text_content("#loss") == "1.875"
    assert not errors, errors


def test_dashboard_says_when_the_coordinator_is_gone(coordinator, page):
    page.goto(f"{coordinator.url}/?refresh=300", wait_until="load")
    page.wait_for_function("document.getElementById('status').textContent === 'live'", timeout=30_000)
    coordinator.http.stop()
    page.wait_for_function("document.getElementById('status').textContent.startsWith('coordinator unreachable')",
                           timeout=30_000)  # fmt: skip
    assert page.text_content("#global-step") == "445"  # the last numbers stay on screen
