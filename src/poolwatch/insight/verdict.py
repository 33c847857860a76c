"""The likely cause when requests wait for a pool: one rule, the one docs/runbooks.md describes.

The rule reads a `Window` (the last minute, and the minutes before it as a baseline)
and answers with the first cause that fits, in this order:

1. ``none``: no request queued, timed out or is waiting now.
2. ``server_refusing``: connection attempts failed in the window (the server said no,
   or could not be reached), so the pool could not grow to its size.
3. ``leak``: a checkout is older than ``leak_timeout`` right now.
4. ``held_idle``: more than half of the checked-out time the connections ran no query
   (idle inside a transaction, or idle). Only when the pool measures what held
   connections do; without that split this cause is never named.
5. ``slow_queries``: the mean hold time is at least twice the baseline's.
6. ``traffic_spike``: the request rate is at least twice the baseline's.
7. ``too_small``: none of the above: the same work as before does not fit.

Order matters: a refused server or a leak makes every other figure look wrong, and a
held-idle connection makes hold times long without any query being slow.
"""

from __future__ import annotations

from dataclasses import dataclass

from .window import Window

CAUSES = (
    "too_small",
    "slow_queries",
    "traffic_spike",
    "held_idle",
    "leak",
    "server_refusing",
    "none",
)
#: held_idle when more than this share of checked-out time ran no query
IDLE_SHARE = 0.5
#: slow_queries / traffic_spike when hold time / request rate grew at least this much
CHANGE_FACTOR = 2.0


@dataclass(frozen=True)
class Verdict:
    cause: str
    why: str

    def to_json(self) -> dict[str, str]:
        return {"cause": self.cause, "why": self.why}


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.0f} s"


def judge(w: Window) -> Verdict:
    """The first cause of the rule above that fits *w*."""
    per = f"in the last {w.recent.seconds:.0f} s"
    if w.waits <= 0 and w.timeouts <= 0 and w.waiting_now <= 0:
        return Verdict("none", f"no request waited for a connection {per}.")
    if w.connect_errors:
        classes = ", ".join(
            f"{n:.0f} of class {c or 'unknown'}" for c, n in sorted(w.connect_errors.items())
        )
        return Verdict(
            "server_refusing",
            f"{sum(w.connect_errors.values()):.0f} connection attempts failed {per}"
            f" ({classes}) while {w.waits:.0f} requests waited: the server is refusing"
            " or unreachable, a bigger pool cannot help.",
        )
    if w.leaked_now > 0:
        return Verdict(
            "leak",
            f"{w.leaked_now:.0f} connections are checked out past leak_timeout and"
            f" {w.waits:.0f} requests waited {per}: code is not giving connections back.",
        )
    if w.activity is not None:
        held = sum(w.activity.values())
        idle = w.activity.get("idle_in_transaction", 0.0) + w.activity.get("idle", 0.0)
        if held > 0 and idle / held > IDLE_SHARE:
            in_tx = w.activity.get("idle_in_transaction", 0.0) / held
            return Verdict(
                "held_idle",
                f"{idle / held:.0%} of the checked-out time ran no query ({in_tx:.0%} idle"
                f" in a transaction) while {w.waits:.0f} requests waited {per}: code holds"
                " connections while doing something else; a bigger pool would only hold"
                " more of them idle.",
            )
    mean_hold = w.recent.holds.mean
    rate = w.recent.arrival_rate
    base = w.baseline
    if base is not None and base.holds.count and mean_hold >= CHANGE_FACTOR * base.holds.mean:
        return Verdict(
            "slow_queries",
            f"mean hold time rose from {_ms(base.holds.mean)} to {_ms(mean_hold)} while"
            f" the request rate went from {base.arrival_rate:.1f}/s to {rate:.1f}/s:"
            " each request holds its connection longer; more connections would add load"
            " to a database that is already slower.",
        )
    if base is not None and base.arrival_rate > 0 and rate >= CHANGE_FACTOR * base.arrival_rate:
        return Verdict(
            "traffic_spike",
            f"the request rate rose from {base.arrival_rate:.1f}/s to {rate:.1f}/s with"
            f" hold time steady at {_ms(mean_hold)}: more work arrived than the pool serves.",
        )
    return Verdict(
        "too_small",
        f"{w.waits:.0f} requests waited {per} at {w.saturation:.0%} saturation of"
        f" {w.max_size} connections, with {rate:.1f} requests/s each holding"
        f" {_ms(mean_hold)} on average: the work needs more connections than the pool has.",
    )
