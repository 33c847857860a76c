"""Who holds the pool right now: each current checkout, for GET /pools/{name}/checkouts."""

from __future__ import annotations

from typing import Any, Final

from psycopg.pq import TransactionStatus

from .activity import Watched
from .callsites import UNKNOWN

_STATUS_NAMES: Final[dict[int, str]] = {
    TransactionStatus.IDLE: "idle",
    TransactionStatus.ACTIVE: "active",
    TransactionStatus.INTRANS: "idle_in_transaction",
    TransactionStatus.INERROR: "idle_in_transaction_aborted",
    TransactionStatus.UNKNOWN: "unknown",
}


def _backend_pid(conn: Any) -> int | None:
    try:
        pid = conn.pgconn.backend_pid  # libpq's copy, no round trip
    except Exception:
        return None
    return pid if isinstance(pid, int) and pid > 0 else None


def _status(conn: Any) -> str:
    try:
        return _STATUS_NAMES.get(conn.pgconn.transaction_status, "unknown")
    except Exception:
        return "unknown"


def current_checkouts(pools: list[Watched]) -> list[dict[str, Any]]:
    """Every checkout held now in *pools* (one name may cover several), oldest first.

    Each: age in seconds, call site (``"(unknown)"`` while attribution is off),
    transaction status as pg_stat_activity names it, backend pid, and whether it has
    been held longer than the pool's ``leak_timeout``.
    """
    rows: list[dict[str, Any]] = []
    for pool in pools:
        if pool.closed:
            continue
        now = pool.checkouts()
        for checkout in now.checkouts:
            age = max(0.0, now.at - checkout.since)
            limit = now.leak_timeout
            rows.append(
                {
                    "age_seconds": round(age, 6),
                    "site": checkout.site or UNKNOWN,
                    "transaction_status": _status(checkout.connection),
                    "backend_pid": _backend_pid(checkout.connection),
                    "leaked": limit is not None and age > limit,
                }
            )
    rows.sort(key=lambda r: -r["age_seconds"])
    return rows
