"""Keeping secrets out of messages, and filing connect errors under an SQLSTATE class.

A connection string is often wrong precisely where the secret is: an un-encoded ``%``,
``@`` or space in a generated password. libpq's parse errors then quote the offending
fragment, which is part of the password. So secrets are found twice: from a proper
parse when the string parses, and by a tolerant scan that works on malformed input
and marks whole regions of the input (the URI user-info, every password value up to
the next recognisable ``key=``) as secret. Any quoted fragment of a message that lies
in such a region, or any known secret value, is masked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg import pq

# Values of these connection parameters must never be shown.
SECRET_KEYS = (
    "password",
    "sslpassword",
    "oauth_client_secret",
    "scram_client_key",
    "scram_server_key",
)
MASK = "***"
# Secrets shorter than this are masked only where they stand alone: "x" is in every word.
_SHORT = 4


def _known_keywords() -> frozenset[str]:
    try:
        return frozenset(o.keyword.decode() for o in pq.Conninfo.get_defaults())
    except Exception:  # a libpq without PQconndefaults: fall back on the common ones
        return frozenset(("host", "hostaddr", "port", "dbname", "user", "sslmode", *SECRET_KEYS))


_KEYWORDS = _known_keywords()
_SECRET_ALT = "|".join(SECRET_KEYS)
_KEY_ALT = "|".join(sorted(_KEYWORDS, key=len, reverse=True))

_URI_START = re.compile(r"postgres(?:ql)?://", re.IGNORECASE)
# where an unquoted key/value secret ends: before the next " key=" or at the end
_KV_SECRET = re.compile(rf"(?:^|(?<=\s))(?:{_SECRET_ALT})\s*=\s*", re.IGNORECASE)
_NEXT_KV = re.compile(rf"\s+(?:{_KEY_ALT})\s*=", re.IGNORECASE)
_QUERY_SECRET = re.compile(rf"[?&](?:{_SECRET_ALT})=", re.IGNORECASE)
_NEXT_QUERY = re.compile(rf"&(?:{_KEY_ALT})=", re.IGNORECASE)
# what libpq and psycopg quote from the input: "fragment" or 'fragment'
_QUOTED = re.compile(r""""([^"]*)"|'([^']*)'""")
# bare words of a message, stripped of the punctuation around them
_WORD = re.compile(r"[^\s\"',;()\[\]]{4,}")

# For text where only the shape is known (a DSN in a log line): user-info and values.
_URI_USERINFO = re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)(\S*)(@)", re.IGNORECASE)
_KV_VALUE = re.compile(rf"((?:{_SECRET_ALT})\s*=\s*)('(?:[^'\\]|\\.)*'?|\S+)", re.IGNORECASE)


def _secret_spans(text: str) -> list[tuple[int, int]]:
    """Regions of *text* (a conninfo, well formed or not) that may hold a secret."""
    spans: list[tuple[int, int]] = []
    for uri in _URI_START.finditer(text):
        start = uri.end()
        at = text.rfind("@", start)
        colon = text.find(":", start)
        if at >= 0 and 0 <= colon < at:
            spans.append((colon + 1, at))
        for q in _QUERY_SECRET.finditer(text, start):
            nxt = _NEXT_QUERY.search(text, q.end())
            spans.append((q.end(), nxt.start() if nxt else len(text)))
    for kv in _KV_SECRET.finditer(text):
        start = end = kv.end()
        if text.startswith("'", start):
            end += 1
            while end < len(text) and text[end] != "'":
                end += 2 if text[end] == "\\" else 1
        # A broken value runs on (stray quotes, unquoted spaces): up to the next key=.
        nxt = _NEXT_KV.search(text, min(end + 1, len(text)))
        spans.append((start, nxt.start() if nxt else len(text)))
    return [(a, b) for a, b in spans if b > a]


def _inputs(conninfo: object, kwargs: Mapping[str, Any] | None) -> list[str]:
    texts = [conninfo] if isinstance(conninfo, str) else []
    texts += [v for v in (kwargs or {}).values() if isinstance(v, str)]
    return texts


def secrets_in(conninfo: object, kwargs: Mapping[str, Any] | None = None) -> list[str]:
    """The secret values found in a connection string and keyword arguments.

    Includes passwords of connection strings nested in ``dbname``, and, for input
    that does not parse, every region that may hold one.
    """
    found: list[str] = []
    for key in SECRET_KEYS:
        value = (kwargs or {}).get(key)
        if value:
            found.append(str(value))
    for text in _inputs(conninfo, kwargs):
        try:
            params = pg_conninfo.conninfo_to_dict(text)
        except Exception:
            params = {}
        found += [str(params[k]) for k in SECRET_KEYS if params.get(k)]
        nested = params.get("dbname")
        if isinstance(nested, str) and nested != text and ("=" in nested or "://" in nested):
            found += secrets_in(nested)
        found += [text[a:b] for a, b in _secret_spans(text)]
    # longest first, so that a secret containing another is masked whole
    return sorted({s for s in found if s}, key=len, reverse=True)


def _overlaps_secret(fragment: str, texts: Iterable[str]) -> bool:
    """Whether some occurrence of *fragment* in the inputs touches a secret region."""
    if not fragment:
        return False
    for text in texts:
        spans = _secret_spans(text)
        at = text.find(fragment)
        while at >= 0:
            end = at + len(fragment)
            if any(at < b and a < end for a, b in spans):
                return True
            at = text.find(fragment, at + 1)
    return False


def redact(text: str, secrets: Iterable[str] | None = None) -> str:
    """*text* with passwords in conninfo strings and URIs, and the given *secrets*, masked."""
    for secret in secrets or ():
        if len(secret) >= _SHORT:
            text = text.replace(secret, MASK)
        elif secret:  # a short one is masked only as a whole word, not inside others
            text = re.sub(rf"(?<!\w){re.escape(secret)}(?!\w)", MASK, text)
    text = _URI_USERINFO.sub(rf"\1{MASK}\3", text)
    return _KV_VALUE.sub(rf"\1{MASK}", text)


def redact_message(message: str, conninfo: object, kwargs: Mapping[str, Any] | None = None) -> str:
    """A libpq/psycopg *message* about *conninfo* and *kwargs*, safe to show.

    Quoted fragments that come from a secret region of the input become ``"***"``,
    then every known secret value and anything shaped like a password is masked.
    """
    texts = _inputs(conninfo, kwargs)
    secrets = secrets_in(conninfo, kwargs)

    def secret(fragment: str) -> bool:
        return _overlaps_secret(fragment, texts) or any(
            s in fragment if len(s) >= _SHORT else s == fragment for s in secrets
        )

    def mask_quoted(m: re.Match[str]) -> str:
        quote = m.group(0)[0]
        return f"{quote}{MASK}{quote}" if secret(m.group(0)[1:-1]) else m.group(0)

    def mask_word(m: re.Match[str]) -> str:
        return MASK if secret(m.group(0)) else m.group(0)

    message = _QUOTED.sub(mask_quoted, message)
    return redact(_WORD.sub(mask_word, message), secrets)


def _chain(error: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    todo = [error]
    while todo:
        ex = todo.pop()
        if id(ex) in seen:
            continue
        seen.add(id(ex))
        yield ex
        todo += [e for e in (ex.__cause__, ex.__context__) if e is not None]


def without_secrets(
    error: BaseException, conninfo: object, kwargs: Mapping[str, Any] | None = None
) -> BaseException:
    """*error*, or a copy of it with the secrets of the input masked and no chain.

    The copy has the same type, so that callers' ``except`` clauses still match;
    it has no ``__cause__``/``__context__``, which could carry the original text.
    Only `Exception` is copied: cancellations and interrupts pass through unchanged.
    """
    if not isinstance(error, Exception):
        return error
    texts = [str(e) for e in _chain(error)] + [repr(a) for a in error.args]
    safe = [redact_message(t, conninfo, kwargs) for t in texts]
    if safe == texts:
        return error
    message = redact_message(str(error), conninfo, kwargs)
    try:
        copy = type(error)(message)
    except Exception:  # a type whose constructor wants other arguments
        copy = RuntimeError(f"{type(error).__name__}: {message}")
    copy.__cause__ = None
    copy.__context__ = None
    copy.__suppress_context__ = True
    return copy


# Phrases libpq uses when the server refuses a connection before SQLSTATE is available.
_MESSAGE_CLASSES = (
    ("too many clients", "53"),
    ("too many connections", "53"),
    ("remaining connection slots are reserved", "53"),
    ("password authentication failed", "28"),
    ("authentication failed", "28"),
    ("no pg_hba.conf entry", "28"),
    ("does not exist", "3D"),
    ("the database system is shutting down", "57"),
    ("the database system is starting up", "57"),
    ("terminating connection due to administrator command", "57"),
)


def connect_error_class(error: BaseException) -> str:
    """The SQLSTATE class of a failed connect: "53", "28", "3D", "57", "08" or "other".

    Network failures (refused, unreachable, timed out, reset) have no SQLSTATE and are
    filed under "08", the class of connection exceptions. Errors from outside psycopg
    and the network (a ``conninfo`` callable whose vault is down, a custom
    ``connection_class`` raising its own error) are "other".
    """
    if not isinstance(error, (psycopg.Error, OSError)):
        return "other"
    sqlstate = getattr(error, "sqlstate", None)
    if isinstance(sqlstate, str) and len(sqlstate) == 5:
        cls = sqlstate[:2]
        return cls if cls in ("08", "28", "53", "57", "3D") else "other"
    message = str(error).lower()
    for phrase, cls in _MESSAGE_CLASSES:
        if phrase in message:
            return cls
    return "08"
