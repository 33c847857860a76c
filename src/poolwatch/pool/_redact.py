"""Keeping secrets out of messages, and filing connect errors under an SQLSTATE class."""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import conninfo as pg_conninfo

# Values of these connection parameters must never be shown.
SECRET_KEYS = ("password", "sslpassword")

_URI_PASSWORD = re.compile(r"(://[^:/@\s]*:)([^@\s]*)(@)")
_KV_PASSWORD = re.compile(r"((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def secrets_in(conninfo: str, kwargs: dict[str, Any] | None = None) -> list[str]:
    """The secret values found in a connection string and keyword arguments."""
    found: list[str] = []
    try:
        params = pg_conninfo.conninfo_to_dict(conninfo)
    except Exception:
        params = {}
    for key in SECRET_KEYS:
        for source in (params, kwargs or {}):
            value = source.get(key)
            if value:
                found.append(str(value))
    return found


def redact(text: str, secrets: list[str] | None = None) -> str:
    """*text* with passwords in conninfo strings and URIs, and the given *secrets*, masked."""
    text = _URI_PASSWORD.sub(r"\1***\3", text)
    text = _KV_PASSWORD.sub(r"\1***", text)
    for secret in secrets or ():
        if secret:
            text = text.replace(secret, "***")
    return text


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
