"""HTTP details of the exporter: UTF-8 bearer tokens, HEAD, and q=0 in negotiation."""

from __future__ import annotations

import gzip

import httpx
import pytest

from poolwatch import ConnectionPool

from ..metrics.scrape import exporter

pytestmark = pytest.mark.db

OPENMETRICS = "application/openmetrics-text"
PATHS = ("/metrics", "/pools", "/readyz", "/healthz", "/api/live", "/")


@pytest.fixture
def pool(dsn):
    with ConnectionPool(dsn, min_size=1, max_size=2, name="http") as pool:
        pool.wait(timeout=60)
        yield pool


def test_a_non_ascii_token_sent_as_utf8_matches(pool):
    token = "tökén-🔑-密码"
    with exporter([pool], token=token) as srv:
        good = ("Bearer " + token).encode("utf-8")
        for path in ("/metrics", "/pools", "/api/live"):
            ok = httpx.get(srv.url + path, headers={"Authorization": good}, timeout=30)
            assert ok.status_code == 200, (path, ok.text[:200])
            # the same characters sent as Latin-1 bytes are a different token
            latin = "Bearer tökén".encode("latin-1")
            r = httpx.get(srv.url + path, headers={"Authorization": latin}, timeout=30)
            assert r.status_code == 401
            wrong = ("Bearer " + token[:-1]).encode("utf-8")
            r = httpx.get(srv.url + path, headers={"Authorization": wrong}, timeout=30)
            assert r.status_code == 401
            assert token not in r.text


def test_head_answers_like_get_without_a_body(pool):
    with exporter([pool]) as srv:
        for path in PATHS:
            get = httpx.get(srv.url + path, timeout=30)
            head = httpx.head(srv.url + path, timeout=30)
            assert head.status_code == get.status_code == 200, path
            assert head.content == b"", path
            assert head.headers["content-type"] == get.headers["content-type"], path
        # for a body that does not change between two requests, the length agrees too
        for path in ("/healthz", "/"):
            get = httpx.get(srv.url + path, timeout=30)
            head = httpx.head(srv.url + path, timeout=30)
            assert int(head.headers["content-length"]) == len(get.content), path


def test_head_needs_the_token_like_get(pool):
    with exporter([pool], token="t0ken") as srv:
        assert httpx.head(srv.url + "/metrics", timeout=30).status_code == 401
        auth = {"Authorization": "Bearer t0ken"}
        assert httpx.head(srv.url + "/metrics", headers=auth, timeout=30).status_code == 200


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        (f"{OPENMETRICS};version=1.0.0", True),
        (f"{OPENMETRICS};version=1.0.0;q=0", False),
        (f"{OPENMETRICS};q=0.0, text/plain", False),
        (f"{OPENMETRICS};q=0.000, */*;q=0.1", False),
        (f"text/plain;q=0.3, {OPENMETRICS};version=1.0.0;q=0.5", True),
        (f"text/plain;q=0.9, {OPENMETRICS};q=0.5", False),
        (f"text/plain;q=0, {OPENMETRICS};q=0.1", True),
        ("*/*", False),
        ("text/plain", False),
    ],
)
def test_accept_q_values_are_honoured(pool, accept, openmetrics):
    with exporter([pool]) as srv:
        r = httpx.get(srv.url + "/metrics", headers={"Accept": accept}, timeout=30)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(OPENMETRICS) is openmetrics
    assert r.text.endswith("# EOF\n") is openmetrics


def test_nothing_acceptable_is_406(pool):
    with exporter([pool]) as srv:
        r = httpx.get(
            srv.url + "/metrics",
            headers={"Accept": f"{OPENMETRICS};q=0, text/plain;q=0, */*;q=0"},
            timeout=30,
        )
    assert r.status_code == 406


@pytest.mark.parametrize(
    ("accept_encoding", "zipped"),
    [
        ("gzip", True),
        ("gzip;q=0", False),
        ("gzip; q=0.0, identity", False),
        ("*;q=0.5", True),
        ("gzip;q=0, *;q=1", False),
        ("deflate, br", False),
        ("GZIP;Q=0.8", True),
    ],
)
def test_accept_encoding_q_values_are_honoured(pool, accept_encoding, zipped):
    with exporter([pool]) as srv:
        with httpx.stream(
            "GET", srv.url + "/metrics", headers={"Accept-Encoding": accept_encoding}, timeout=30
        ) as r:
            body = b"".join(r.iter_raw())
            encoding = r.headers.get("content-encoding")
    assert len(body) >= 1024 or not zipped  # large enough to be worth compressing
    assert (encoding == "gzip") is zipped
    text = gzip.decompress(body) if zipped else body
    assert b"poolwatch_connections_max" in text
