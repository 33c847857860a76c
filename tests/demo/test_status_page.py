"""The status page in a real headless Chromium, while a test workload saturates a pool."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from poolwatch import ConnectionPool

from ..acompat import wait_until
from ..metrics.scrape import exporter

pytestmark = [pytest.mark.db, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("POOLWATCH_ARTIFACTS", ROOT / "test-artifacts"))


@pytest.fixture(scope="module")
def chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "chromium is not installed (scripts/setup installs the Debian package)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: the suite runs as root in CI, where Chromium's sandbox refuses to start
        browser = p.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


def field(page, name: str) -> str:
    return page.locator(f'.card[data-pool="page"] [data-field="{name}"]').inner_text()


def test_page_follows_a_saturating_pool(dsn, chromium):
    with ConnectionPool(dsn, min_size=2, max_size=10, name="page", open=True) as pool:
        pool.wait()
        with exporter([pool], registry=CollectorRegistry()) as srv:
            page = chromium.new_page(viewport={"width": 1100, "height": 760})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(srv.url + "/")
            page.wait_for_selector('.card[data-pool="page"]', timeout=10_000)
            card = page.locator('.card[data-pool="page"]')
            assert field(page, "used") == "0"
            assert "ok" in card.get_attribute("class")

            held = [pool.getconn() for _ in range(9)]  # 90% of the pool
            try:
                # the page polls once a second: wait for it to show the new state
                wait_until(lambda: field(page, "used") == "9", timeout=10)
                wait_until(lambda: "warn" in card.get_attribute("class"), timeout=10)
                pools = httpx.get(srv.url + "/pools").json()["pools"][0]
                live = httpx.get(srv.url + "/api/live").json()["pools"][0]
                assert field(page, "used") == str(pools["connections"]["used"]) == "9"
                assert field(page, "max") == str(pools["connections"]["max"]) == "10"
                assert field(page, "idle") == str(pools["connections"]["idle"])
                assert field(page, "state") == "over 80%"
                assert live["saturation_now"] == 0.9
                assert field(page, "saturation").startswith("90 %")
                assert field(page, "leaked") == "0"
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)
            finally:
                for conn in held:
                    pool.putconn(conn)
            wait_until(lambda: field(page, "used") == "0", timeout=10)
            wait_until(lambda: "ok" in card.get_attribute("class"), timeout=10)
            page.close()
    # everything the page loaded came from the exporter itself: no CDN, no web font
    assert requests and all(url.startswith(srv.url) for url in requests), requests


def test_page_is_calm_without_pools(chromium):
    with exporter([], registry=CollectorRegistry()) as srv:
        page = chromium.new_page()
        page.goto(srv.url + "/")
        page.wait_for_selector(".empty", timeout=10_000)
        page.wait_for_function(
            "document.querySelector('.empty').textContent.includes('No open pool')"
        )
        assert "updated" in page.locator("#status").inner_text()
        page.close()
