"""The status page in headless Chromium with hostile data in every field it shows.

Hostile values come from a real pool's name, from a multiprocess state file (pool
names and server labels; the schema refuses bad kinds and numbers) and, for types
the server can never produce, from an /api/live answer replaced in the browser. Each
payload would set ``window.__pwned`` and request ``/pwned-...`` if it ever ran as script. The bearer
token, given as ``#token=``, must be out of reach of code running in the page.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest

from poolwatch import ConnectionPool
from poolwatch.metrics.multiprocess import pid_namespace
from poolwatch.metrics.multiprocess_files import StateFile, file_name
from poolwatch.metrics.state import PoolState

from ..acompat import wait_until
from ..demo.test_status_page import chromium  # noqa: F401  (the browser fixture)
from ..metrics.scrape import exporter

pytestmark = [pytest.mark.slow]

IMG = "<img src=x onerror=\"window.__pwned='img';fetch('/pwned-img')\">"
SCRIPT = "<script>window.__pwned='script';fetch('/pwned-script')</script>"
SVG = "\"><svg onload=\"window.__pwned='svg';fetch('/pwned-svg')\"></svg>"
ATTR = "' onmouseover='window.__pwned=\"attr\"' x='"
PAYLOADS = [IMG, SCRIPT, SVG, ATTR]
TOKEN = "tok-Zq8-n0t-f0r-scripts"


class Watch:
    """The page's requests, and whether any payload ran."""

    def __init__(self, page) -> None:
        self.page = page
        self.urls: list[str] = []
        page.on("request", lambda r: self.urls.append(r.url))

    def ran(self) -> bool:
        return self.page.evaluate("() => window.__pwned !== undefined")

    def assert_nothing_ran(self) -> None:
        assert self.page.evaluate("() => window.__pwned === undefined"), self.page.evaluate(
            "() => String(window.__pwned)"
        )
        pwned = [u for u in self.urls if "pwned" in u]
        assert not pwned, pwned


def open_page(browser, url: str) -> tuple[object, Watch]:
    page = browser.new_page()
    watch = Watch(page)
    page.goto(url)
    return page, watch


def card_texts(page) -> list[str]:
    return page.eval_on_selector_all(".card", "cards => cards.map(c => c.innerText)")


def names_shown(page) -> list[str]:
    return page.eval_on_selector_all(".card .name", "els => els.map(e => e.textContent)")


def state_file(directory: Path, *, errors: float, used: float) -> None:
    """A live worker's state file whose pool names and server labels are hostile.

    Error kinds outside the contract and numbers written as strings never get this far:
    the reader's schema refuses the whole file (tests/metrics/test_multiprocess_files.py).
    How the page treats such values is proved by replacing /api/live in the browser below.
    """
    pools = []
    for number, payload in enumerate(PAYLOADS):
        state = PoolState(pool=f"{payload} #{number}", info={"host": payload, "dbname": payload})
        state.scalars.update(
            {
                ("connections", ("used",)): used,
                ("connections", ("idle",)): 1,
                ("connections_max", ()): 10,
                ("pending_requests", ()): 0,
                ("used_seconds", ()): errors,
                ("waits", ()): errors,
                ("leaked", ()): 0,
                ("errors", ("connect", "08")): errors,
            }
        )
        pools.append(state)
    content = StateFile(
        incarnation=INCARNATION,
        pid=os.getpid(),
        pidns=pid_namespace(),
        heartbeat=time.time(),  # live for the next STALE_AFTER seconds
        pools=pools,
    )
    path = directory / file_name(INCARNATION)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(content.encode())
    os.replace(tmp, path)


INCARNATION = "0123456789abcdef0123456789abcdef"


def test_hostile_state_file_shows_as_text_and_runs_nothing(chromium, tmp_path):  # noqa: F811
    state_file(tmp_path, errors=1, used=7)
    with exporter(multiproc_dir=str(tmp_path)) as srv:
        page, watch = open_page(chromium, srv.url + "/")
        page.wait_for_selector(".card", timeout=20_000)
        time.sleep(1.5)  # let the sampler take a first sample, then make the errors move
        state_file(tmp_path, errors=50, used=7)
        # the errors move on every card (the hostile names are shown as text below)
        wait_until(
            lambda: (
                watch.ran()
                or (
                    len(card_texts(page)) == len(PAYLOADS)
                    and all("connect" in t for t in card_texts(page))
                )
            ),
            timeout=30,
        )
        watch.assert_nothing_ran()
        assert sorted(names_shown(page)) == sorted(f"{p} #{n}" for n, p in enumerate(PAYLOADS))
        used = page.eval_on_selector_all(
            '.card [data-field="used"]', "els => els.map(e => e.textContent)"
        )
        assert used == ["7"] * len(PAYLOADS)
        watch.assert_nothing_ran()
        page.close()


@pytest.mark.db
def test_hostile_pool_names_show_as_text_and_run_nothing(chromium, dsn):  # noqa: F811
    pools = [ConnectionPool(dsn, min_size=1, name=p, open=True) for p in PAYLOADS]
    try:
        for p in pools:
            p.wait(timeout=60)
        with exporter(pools) as srv:
            page, watch = open_page(chromium, srv.url + "/")
            wait_until(lambda: len(names_shown(page)) == len(PAYLOADS), timeout=30)
            assert sorted(names_shown(page)) == sorted(PAYLOADS)
            watch.assert_nothing_ran()
            page.close()
    finally:
        for p in pools:
            p.close()


def hostile_live() -> dict[str, object]:
    """An /api/live answer with a hostile string (or wrong type) in every field."""
    fields = [
        "saturation",
        "saturation_now",
        "used",
        "idle",
        "opening",
        "max",
        "waiting",
        "waits_per_minute",
        "wait_p95_seconds",
        "errors_per_minute",
        "oldest_checkout_seconds",
        "oldest_wait_seconds",
        "leaked",
    ]
    pools: list[dict[str, object]] = []
    for payload in PAYLOADS:
        pool: dict[str, object] = dict.fromkeys(fields, payload)
        pool["name"] = payload
        pool["errors_per_minute_by_kind"] = {p: payload for p in PAYLOADS}
        pool["sparkline"] = [payload, 0.5, None, payload, 1]
        pools.append(pool)
    # wrong types where numbers and strings are expected
    pools.append(
        {
            "name": 12345,
            "saturation": {"x": IMG},
            "used": [IMG],
            "errors_per_minute": 1,
            "errors_per_minute_by_kind": [IMG],
            "sparkline": IMG,
        }
    )
    return {"window_seconds": IMG, "pools": pools}


def test_hostile_values_in_every_field_run_nothing(chromium):  # noqa: F811
    body = json.dumps(hostile_live())
    with exporter() as srv:
        page = chromium.new_page()
        watch = Watch(page)
        page.route(
            "**/api/live",
            lambda route: route.fulfill(status=200, content_type="application/json", body=body),
        )
        page.goto(srv.url + "/")
        wait_until(lambda: watch.ran() or len(names_shown(page)) == len(PAYLOADS) + 1, timeout=30)
        watch.assert_nothing_ran()
        wait_until(lambda: "updated" in page.locator("#status").inner_text(), timeout=30)
        assert set(PAYLOADS) <= set(names_shown(page))
        assert "12345" in names_shown(page)
        text = " ".join(card_texts(page))
        for payload in PAYLOADS:
            assert payload in text  # the error kinds, as text
        time.sleep(1.5)  # a second refresh over the same cards
        watch.assert_nothing_ran()
        page.close()


def test_page_has_a_csp_that_blocks_inline_script(chromium):  # noqa: F811
    with exporter() as srv:
        r = httpx.get(srv.url + "/", timeout=30)
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "<script>" not in r.text  # no inline script left to allow
        page, watch = open_page(chromium, srv.url + "/")
        page.wait_for_selector(".empty", timeout=20_000)
        # were markup ever to reach innerHTML again, its handlers would still not run
        page.evaluate(f"() => {{ document.body.insertAdjacentHTML('beforeend', {IMG!r}); }}")
        page.evaluate(f"() => {{ document.body.insertAdjacentHTML('beforeend', {SVG!r}); }}")
        time.sleep(0.5)
        watch.assert_nothing_ran()
        page.close()


FIND_TOKEN = """token => {
    const found = [];
    if (location.href.includes(token)) found.push("location");
    if (document.documentElement.outerHTML.includes(token)) found.push("document");
    if (document.cookie.includes(token)) found.push("cookie");
    if (window.name.includes(token)) found.push("window.name");
    for (const entry of performance.getEntries())
        if (entry.name.includes(token)) found.push("performance " + entry.entryType);
    for (const store of [localStorage, sessionStorage])
        if (JSON.stringify(store).includes(token)) found.push("storage");
    for (const name of Object.getOwnPropertyNames(window)) {
        let value;
        try { value = window[name]; } catch (e) { continue; }
        if (typeof value === "string" && value.includes(token)) found.push("window." + name);
        if (value && typeof value === "object" && !(value instanceof Node) && value !== window) {
            try { if (JSON.stringify(value).includes(token)) found.push("window." + name); }
            catch (e) { /* cyclic or not serialisable */ }
        }
    }
    return found;
}"""


def test_token_is_out_of_reach_of_code_in_the_page(chromium, tmp_path):  # noqa: F811
    with exporter(token=TOKEN) as srv:
        page = chromium.new_page()
        page.goto(srv.url + "/#token=" + TOKEN)
        # the page did use the token: /api/live answered it
        wait_until(lambda: "updated" in page.locator("#status").inner_text(), timeout=30)
        assert page.evaluate(FIND_TOKEN, TOKEN) == []
        # top-level names a classic script would leave behind
        for name in ("token", "headers", "TOKEN", "auth", "authorization"):
            value = page.evaluate(
                f"() => {{ try {{ return String({name}); }} catch (e) {{ return ''; }} }}"
            )
            assert TOKEN not in value, name
        # code that hooks fetch after the page started sees no Authorization header
        page.evaluate(
            """() => {
                window.__seen = [];
                const original = window.fetch;
                window.fetch = (...args) => {
                    window.__seen.push(JSON.stringify(args));
                    return original(...args);
                };
            }"""
        )
        before = page.locator("#status").inner_text()
        wait_until(lambda: page.locator("#status").inner_text() != before, timeout=30)
        time.sleep(1.2)
        assert TOKEN not in page.evaluate("() => window.__seen.join(' ')")
        assert "cannot reach" not in page.locator("#status").inner_text()
        page.close()
