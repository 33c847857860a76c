"""`poolwatch demo --scenario held-idle`: the verdict and the advice appear within seconds."""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from poolwatch.embedded import free_port

from ..demo.test_demo import read_until, start_demo

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_held_idle_scenario_shows_verdict_and_advice():
    port = free_port()
    proc, lines = start_demo("--scenario", "held-idle", "--duration", "60", "--port", str(port),
                             "--workers", "4", "--pool-size", "4")  # fmt: skip
    try:
        read_until(proc, lines, r"PostgreSQL is up", 90)
        read_until(proc, lines, r"scenario held-idle: .*open across", 10)
        started = time.monotonic()
        verdict = read_until(proc, lines, r"^  verdict: ", 30)
        advice = read_until(proc, lines, r"^  advice: max_size \d+", 30)
        seconds = time.monotonic() - started
        base = f"http://127.0.0.1:{port}"
        (view,) = httpx.get(base + "/pools", timeout=10).json()["pools"]
        answer = httpx.get(base + "/pools/demo/advice", timeout=30).json()
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        lines.append(rest)
    output = "".join(lines)
    assert proc.returncode == 0, output
    assert seconds < 30, output  # a bound on the wait, not a performance claim
    assert view["waits_total"] > 0, "the scenario made no request wait"
    assert answer["pool"] == "demo" and answer["recommended_max_size"] >= 1
    assert answer["measured"]["hold_seconds_mean"] >= 0.3  # the 0.3 s call is held
    if "activity" in view:
        # with the held-time split measured, the cause is named and the pool exonerated
        assert "verdict: held_idle:" in verdict, output
        assert answer["verdict"]["cause"] == "held_idle"
        assert not answer["pool_is_the_problem"]
        assert "the pool is not the problem" in advice
    else:
        # without it the rule must not guess: the queue is all it can see
        assert "verdict: too_small:" in verdict, output
    if "callsites" in view:
        assert "held most by:" in output
