"""Every benchmark, side by side in one run, against one throwaway PostgreSQL.

    ./scripts/bench               # writes benchmarks/RESULTS.md and prints it
    ./scripts/bench --quick       # fewer rounds: a smoke run, not for the record

Sections: checkout cost against every peer; instructions per checkout and per query
(valgrind: deterministic where the wall clock is not); SELECT 1 against raw connections;
contention and fairness; connect-per-request against pooled, on loopback and over
added latency; metrics on against off; /metrics rendering; the sizing proof (the
advice's predicted wait p95 and saturation against runs at those sizes). Medians over rounds,
ratios taken within a round, and a spread column for how noisy the machine was.
Benchmarks never run in the test suite.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import (  # noqa: E402
    before,
    checkout,
    connect,
    goals,
    handoff,
    harness,
    insight_cost,
    instructions,
    memory,
    metrics_cost,
    query_profile,
    sizing,
    throughput,
    web,
)

INSTRUCTIONS_TITLE = "Instructions per checkout and per query (valgrind)"
INSTRUCTIONS_INTRO = (
    "CPU instructions counted by valgrind (cachegrind, cache simulation off), in the client"
    " process only: all its threads (the pool's workers too), not PostgreSQL's. Unlike the"
    " wall clock on this shared VM, which moves by a third between runs, a count repeats"
    " for the same code, and moved by up to 1% over four of the interpreter's hash seeds"
    " (its dictionaries' layout): these rows can judge a 5% difference, not a 1% one."
    " Each figure is (a child Python's count after N operations - the same child's count"
    " after 0) / N: start-up, imports, connecting and a warm-up of 200 of each operation"
    " excluded. Checkout:"
    " pool of 1, no query, `{before}` from git as in the other tables; call sites are the"
    " opt-in borrower attribution. Per query: SELECT 1 in autocommit, one thread, one"
    " connection; the pool's share is the part of the client's own work per query that the"
    " pool adds, the deterministic side of the goal of T = 1 at ≥ 0.95 of raw (the round"
    " trip and the server's work, which the pool does not change, are not counted)."
)
INSIGHT_TITLE = "Insight on against off (checkout cost, µs per operation)"
INSIGHT_INTRO = (
    "Pool of 1, an idle connection always available, no query; {rounds} rounds of {ops}"
    " operations, variants interleaved in each round. Activity sampling is a thread reading"
    " the checked-out connections every 10 ms (every exported pool has it); call sites"
    " (opt-in) name the borrower at every checkout, on the fast checkout path. Ratios are"
    " medians of in-round ratios; µs over insight off = (that ratio - 1) x insight off's"
    " median."
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds, for a smoke run")
    parser.add_argument("--dsn", help="use this server instead of a throwaway cluster")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="run the SELECT 1 against raw rows without pinning the client to CPU 0 and"
        " PostgreSQL to CPU 1 (they are pinned by default: see the README's Benchmarks)",
    )
    args = parser.parse_args()
    quick = args.quick
    rounds = 3 if quick else 9
    started = time.monotonic()
    load_before = os.getloadavg()

    sections: list[tuple[str, str, str]] = []
    # A cluster of our own (unless --dsn): harness.server marks it as one the vs-raw
    # rows may pin to a CPU; someone else's server is never moved.
    with harness.server(args.dsn, max_connections=300, announce="bench") as dsn:
        print("bench: checkout", file=sys.stderr)
        ops = 5_000 if quick else 20_000
        sections.append((
            "Checkout cost (µs per operation)",
            f"Pool of 1, an idle connection always available, no query; {rounds} rounds of"
            f" {ops} operations, every library interleaved in each round. poolwatch keeps"
            " its aggregates in every variant (they cannot be turned off); the variants"
            " differ in what exports them, read between rounds as a scrape would. The async"
            " poolwatch row has the same aggregates. asyncpg resets the session on release"
            " (a round trip) by default. psycopg2 has no `with` form.",
            checkout.table(checkout_results := checkout.measure(dsn, rounds, ops)),
        ))  # fmt: skip
        print("bench: insight on against off", file=sys.stderr)
        sections.append((
            INSIGHT_TITLE,
            INSIGHT_INTRO.format(rounds=rounds, ops=ops),
            insight_cost.table(insight_cost.measure(dsn, rounds, ops)),
        ))  # fmt: skip
        print("bench: instruction counts (valgrind)", file=sys.stderr)
        instruction_results = instructions.measure(dsn)
        sections.append((
            INSTRUCTIONS_TITLE,
            INSTRUCTIONS_INTRO.format(before=before.NAME),
            instructions.table(instruction_results),
        ))  # fmt: skip
        print("bench: SELECT 1 against raw connections", file=sys.stderr)
        # Many short rounds rather than a few long ones: on this VM a run's speed moves by
        # tens of percent from one second to the next, and the median of 30 in-round
        # ratios is steadier than that of 7 (the interval column says how steady).
        raw_rounds, raw_seconds = (3, 0.3) if quick else (30, 0.3)
        pin_notes: list[str] = []
        raw_results = throughput.vs_raw(
            dsn, raw_rounds, raw_seconds, (1, 4, 16, 64), pin=args.pin, notes=pin_notes
        )
        sections.append((
            "SELECT 1 throughput against raw connections",
            "T threads each running SELECT 1 on a pool of T, against T threads each holding"
            " its own connection; all in autocommit (one round trip per query). Each row is"
            f" measured both ways in every one of {raw_rounds} rounds: **fixed duration**"
            f" (every thread runs for {raw_seconds:g} s per library; throughput = queries /"
            " elapsed; slowest worker's share = its queries / the mean) and **fixed work**"
            " (every thread runs the same number of queries, what raw connections do in that"
            " time; throughput = queries / time until the last thread ends; slowest worker's"
            " share = mean finish time / last finish time). Within a round the libraries take"
            f" turns every {throughput.SLICE * 1e3:g} ms on the same T threads, their order"
            " rotating, so that all of them meet the machine's load alike; a library's round"
            " adds up its slices. CPUs: " + "; ".join(pin_notes) + (
                " (pinned once each row's connections are open, put back after it)."
                if args.pin
                else " (`--no-pin`)."
            ) + " On this VM, slices and pinning together took the standard deviation of"
            " one round's ratio to raw from 0.28-0.73 (one 0.3 s run per library) to"
            " 0.07-0.13 (README, Benchmarks). Ratios are taken within"
            " each round, the table gives their median and, in brackets, a 95% bootstrap"
            " interval of that median (the rounds resampled). Latency = one query including"
            " the pool's checkout and return. Goals: ≥ 0.95 of raw for T = 1, 4, 16 and"
            " ≥ 0.90 for T = 64, in both measures; p99 and max latency within 1.2 x raw's.",
            throughput.vs_raw_table(raw_results),
        ))  # fmt: skip
        print("bench: where the time goes", file=sys.stderr)
        sections.append((
            "Where a query's time goes (profile, T threads on a pool of T)",
            query_profile.__doc__.split("\n\n", 1)[1].replace("\n", " ").strip()
            + f" {4_000 if not quick else 1_000} queries per library and T, median of 3.",
            query_profile.table(query_profile.measure(dsn, (1, 16, 64), 1_000 if quick else 4_000)),
        ))  # fmt: skip
        print("bench: contention", file=sys.stderr)
        rounds_c, seconds = (3, 0.3) if quick else (20, 0.5)
        sections.append((
            "Contention and fairness",
            f"Workers on a pool of 4, {rounds_c} rounds, both measures in each"
            f" round as above (fixed duration: {seconds:g} s; fixed work: what poolwatch"
            " did in that time in a warm-up run, split evenly). Wait = time to get a"
            " connection. Jain fairness of the per-worker completions in the fixed-duration"
            " runs: 1.0 when every worker got an equal share. Goals: 64 asyncio tasks ≥"
            " 1.25 x psycopg_pool in both measures with p99 wait no worse; 16 and 64"
            f" threads at least as good as before (`{before.NAME}`, the code issue 17"
            " started from, measured in the same rounds), Jain ≥ 0.99.",
            throughput.contention_table(
                contention_results := throughput.contention(dsn, rounds_c, seconds)
            ),
        ))  # fmt: skip
        print("bench: async hand-off", file=sys.stderr)
        sections.append((
            "The async waiter's wake-up path (64 tasks on a pool of 4, no query)",
            handoff.__doc__.split("\n\n", 1)[1].replace("\n", " ").strip()
            + f" {3 if quick else 7} rounds, the order alternating; medians.",
            handoff.table(handoff.measure(dsn, 3 if quick else 7, 100 if quick else 300)),
        ))  # fmt: skip
        print("bench: web load", file=sys.stderr)
        web_rounds, web_seconds = (2, 2.0) if quick else (5, 5.0)
        sections.append((
            "Web load: FastAPI under uvicorn, driven by wrk",
            "Two servers at once on loopback, each `uvicorn --workers 3` serving a FastAPI"
            " endpoint that borrows a connection from its worker's async pool (4"
            " connections per worker), runs `SELECT %s::int + 1`, fetches the row and"
            " answers JSON; they differ only in the pool. wrk (Debian package; 2 threads, 32"
            f" connections) drives each for {web_seconds:g} s after a 1 s warm-up, the order"
            f" alternating, {web_rounds} rounds; medians. On this 2-core machine the"
            " servers, PostgreSQL and wrk share the CPUs: the row shows what the pool"
            " changes in a web request's cost, not the machine's capacity.",
            web.table(web.measure(dsn, web_rounds, web_seconds)),
        ))  # fmt: skip
        print("bench: memory", file=sys.stderr)
        sections.append((
            "Memory: the pool's own, per connection and per waiter",
            memory.INTRO,
            memory.table(memory.measure(dsn)),
        ))  # fmt: skip
        print("bench: connect per request", file=sys.stderr)
        sections.append((
            "Connect per request against pooled",
            "SELECT 1 with a new connection each time (TCP, startup, SCRAM) against a"
            " poolwatch pool, on loopback and through a proxy adding 1 ms each way.",
            connect.table(connect.measure(dsn, 2 if quick else 3)),
        ))  # fmt: skip
        print("bench: metrics on against off", file=sys.stderr)
        tps = {
            shape: metrics_cost.throughput(dsn, 5 if quick else 21, *shape)
            for shape in metrics_cost.SHAPES
        }
        sections.append((
            "Metrics on against metrics off (SELECT 1 throughput)",
            "T threads on a pool of T; off = not exported, on = rendered every"
            f" {metrics_cost.SCRAPE_EVERY:g} s (15 times Prometheus' default rate), with and"
            " without the OTel bridge; variants interleaved within every round. Goal: within"
            " 3%.",
            metrics_cost.onoff_table(tps),
        ))  # fmt: skip
        print("bench: /metrics rendering", file=sys.stderr)
        sections.append((
            "Rendering /metrics",
            f"Every family for N pools with history; median of {metrics_cost.RENDER_REPEATS}"
            " renders; prometheus_client's generic exposition of the same families beside"
            " it.",
            metrics_cost.render_table(metrics_cost.render_costs(dsn, (1, 10, 100))),
        ))  # fmt: skip
        print("bench: sizing proof", file=sys.stderr)
        sections.append((
            sizing.TITLE,
            sizing.intro(quick),
            sizing.table(sizing.measure(dsn, quick)),
        ))  # fmt: skip

    minutes = (time.monotonic() - started) / 60
    load_after = os.getloadavg()
    header = (
        "# Benchmark results\n\n"
        f"Command: `./scripts/bench{' --quick' if quick else ''}`, one run of {minutes:.1f} min,"
        f" started {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(time.time() - minutes * 60))}."
        f" Python {platform.python_version()}, {os.cpu_count()} CPUs, PostgreSQL started by"
        " the run on 127.0.0.1 (TCP, SCRAM). The machine is a shared 2-core VM: single runs"
        " move by 10-50%, so read medians and in-round ratios, and the spread columns."
        " Load average (1, 5, 15 min) at the start:"
        f" {', '.join(f'{x:.2f}' for x in load_before)}; at the end:"
        f" {', '.join(f'{x:.2f}' for x in load_after)}.\n"
    )
    sections.insert(0, (
        "Goals (issue 17) at a glance",
        "Judged from the tables below, all from this one run. \"Before\" is poolwatch as"
        f" it was when the issue was filed (`{before.NAME}`, taken from git by"
        " benchmarks/before.py), measured in the same rounds as today's code: the"
        " comparison is the median of in-round ratios, which the machine's load mostly"
        " cancels. Where a goal is missed, the profile section and the CPU and"
        " context-switch columns show where the time goes.",
        goals.table(checkout_results, raw_results, contention_results, instruction_results),
    ))  # fmt: skip
    body = "\n".join(f"\n## {title}\n\n{intro}\n\n{table}\n" for title, intro, table in sections)
    text = header + body
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
