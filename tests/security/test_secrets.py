"""No password, or any piece of one, in errors, their chains, logs, reprs or HTTP answers.

Each password carries a marker (S3CR3T, Q7X9, ...) and is written the way people get
it wrong: un-encoded ``%``, ``@`` and spaces in a URI, unquoted spaces and escaped
quotes in a key/value string, backslashes. It reaches the pool as a string, through
``kwargs`` (including a URI nested in ``dbname``) and from a callable conninfo.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Iterator

import httpx
import pytest

from poolwatch import ConnectionPool, PoolTimeout

from ..acompat import wait_until
from ..metrics.scrape import exporter

pytestmark = pytest.mark.db

# the password, and the markers inside it that must never be seen
PASSWORDS = [
    "p%zzS3CR3T",
    "sec Q7X9",
    "at@sign@M4RK3R",
    "sp ace%20and@K3YW0RD",
    "qu'ote\"D0UBL3",
    "back\\sl\\ash B4CKSL",
    "col:on/sl@sh C0L0N",
    "semi;amp&query=Z9Y8",
]
MARKERS = [m for pw in PASSWORDS for m in re.findall(r"[A-Z0-9]{4,}", pw)]


def kv_quoted(password: str) -> str:
    """The password quoted as libpq expects: 'quoted', with \\ and ' escaped."""
    return "'" + password.replace("\\", "\\\\").replace("'", "\\'") + "'"


def shapes(port: int, password: str) -> Iterator[tuple[str, object, object]]:
    """(label, conninfo, kwargs): the ways one password reaches a pool."""
    base = f"host=127.0.0.1 port={port} user=poolwatch dbname=postgres"
    uri = f"postgresql://poolwatch:{password}@127.0.0.1:{port}/postgres"
    yield "uri", uri, None
    yield "uri-query", f"postgresql://127.0.0.1:{port}/postgres?password={password}", None
    yield "kv-raw", f"{base} password={password}", None
    yield "kv-quoted", f"{base} password={kv_quoted(password)}", None
    yield "kv-unterminated", f"{base} password='{password}", None
    yield "kv-spaced", f"{base} password = {password} sslmode=disable", None
    # a connection string nested in dbname, which libpq expands
    yield "kv-dbname-uri", f"host=127.0.0.1 port={port} dbname={kv_quoted(uri)}", None
    yield "kwargs", base, {"password": password}
    yield "kwargs-dbname-uri", f"host=127.0.0.1 port={port}", {"dbname": uri}
    yield "callable-uri", (lambda: uri), None
    yield "callable-kv", (lambda: f"{base} password={password}"), None
    yield "callable-kwargs", (lambda: base), {"password": password}
    yield "kwargs-callable", base, (lambda: {"password": password})
    yield "kwargs-callable-dbname-uri", f"host=127.0.0.1 port={port}", (lambda: {"dbname": uri})


def chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo = [error]
    while todo:
        ex = todo.pop()
        if id(ex) not in seen:
            seen.add(id(ex))
            yield ex
            todo += [e for e in (ex.__cause__, ex.__context__) if e is not None]


def texts_of(error: BaseException) -> list[str]:
    out = ["".join(traceback.format_exception(error))]
    for ex in chain(error):
        out += [str(ex), repr(ex), repr(ex.args)]
    return out


def assert_clean(text: str, where: str) -> None:
    found = [m for m in MARKERS if m in text]
    assert not found, f"{found} leaked in {where}: {text[:500]!r}"


@pytest.fixture
def every_shape(pg) -> list[tuple[str, object, object]]:
    return [
        (f"{label}:{pw}", conninfo, kwargs)
        for pw in PASSWORDS
        for label, conninfo, kwargs in shapes(pg.port, pw)
    ]


@pytest.mark.timeout(600)  # over a hundred pools, each failing to connect
def test_no_password_reaches_errors_logs_reprs_or_endpoints(every_shape, caplog):
    caplog.set_level(logging.DEBUG)
    errors: list[tuple[str, BaseException]] = []
    pools: list[ConnectionPool] = []
    try:
        for number, (label, conninfo, kwargs) in enumerate(every_shape):
            try:
                pool = ConnectionPool(
                    conninfo, kwargs=kwargs, min_size=1, name=f"case-{number}", open=False
                )
            except ValueError as ex:  # rejected up front: the string does not parse
                errors.append((label, ex))
                continue
            pools.append(pool)
            pool.open(wait=False)
            # every password here is wrong or malformed: the pool must fail to connect
            wait_until(lambda p=pool: p.connect_failing is not None, timeout=60)
            with pytest.raises(PoolTimeout) as info:
                pool.getconn(0.2)
            errors.append((label, info.value))
        with exporter(pools, token=None) as srv:
            bodies = [
                (path, httpx.get(srv.url + path, headers=headers, timeout=30).text)
                for path in ("/metrics", "/pools", "/readyz", "/healthz", "/api/live")
                for headers in ({}, {"Accept": "application/openmetrics-text"})
            ]
            # the endpoints did show every pool that was built
            shown = httpx.get(srv.url + "/pools", timeout=30).json()["pools"]
            assert len(shown) == len(pools)
        reprs = [repr(p) for p in pools]
        # last, as a failed wait() closes the pool
        for pool in pools:
            with pytest.raises(PoolTimeout) as info:
                pool.wait(timeout=0.2)
            errors.append((pool.name, info.value))
    finally:
        for p in pools:
            p.close()

    # every shape was exercised, both ways of failing were seen, timeouts carry the cause
    assert len({label for label, ex in errors if not isinstance(ex, PoolTimeout)}) + len(
        pools
    ) == len(every_shape)
    assert any(isinstance(ex, ValueError) for _, ex in errors)
    assert all(ex.__cause__ is not None for _, ex in errors if isinstance(ex, PoolTimeout))
    for label, error in errors:
        for text in texts_of(error):
            assert_clean(text, f"error of {label}")
    for path, body in bodies:
        assert_clean(body, path)
    for text in reprs:
        assert_clean(text, "repr")
    formatter = logging.Formatter("%(message)s %(exc_text)s")
    assert caplog.records
    for record in caplog.records:
        assert_clean(formatter.format(record), f"log record {record.name}")
        assert_clean(repr(record.args), f"log args {record.name}")


def test_malformed_conninfo_error_is_still_useful():
    with pytest.raises(ValueError) as info:
        ConnectionPool("postgresql://u:p%zzS3CR3T@h/db", open=False)
    message = str(info.value)
    assert "S3CR3T" not in message and "zz" not in message
    assert "percent-encoded" in message and "conninfo" in message
    # an unknown option that is not part of a password is still named
    with pytest.raises(ValueError, match='"bogus_option"'):
        ConnectionPool("host=h bogus_option=1 password=hunter2x", open=False)


def test_secrets_are_found_in_malformed_input():
    from poolwatch.pool._redact import redact_message, secrets_in

    found = secrets_in("host=h password=sec Q7X9 user=u")
    assert "sec Q7X9" in found
    found = secrets_in("postgresql://u:p@ss@S3CR3T@h/db")
    assert any("S3CR3T" in s for s in found)
    message = 'could not translate host name "ss@S3CR3T@h" to address'
    assert "S3CR3T" not in redact_message(message, "postgresql://u:p@ss@S3CR3T@h/db")
    # what is not secret stays readable
    assert redact_message('host "db.example" refused', "host=db.example password=x") == (
        'host "db.example" refused'
    )
