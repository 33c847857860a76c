"""The pool's jitter draws from its own random stream, not the application's."""

from __future__ import annotations

import os
import random

import pytest

from poolwatch import ConnectionPool
from poolwatch.pool import base

pytestmark = pytest.mark.db


def test_a_pool_leaves_the_random_module_alone(dsn):
    random.seed(2026)
    expected = random.Random(2026).random()
    # Opening connections jitters their lifetime; drain() replaces them, jittering again.
    with ConnectionPool(dsn, min_size=2, max_size=2, name="jitter") as pool:
        pool.wait()
        pool.drain()
        pool.wait()
        with pool.connection():
            pass
    assert random.random() == expected  # the application's seeded sequence did not move


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_jitters_differently_from_its_parent():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its next draw, then leave without cleanup
        os.write(write, repr(base.jitter(1.0, 0.0, 1.0)).encode())
        os._exit(0)
    os.close(write)
    child = float(os.read(read, 64).decode())
    os.close(read)
    os.waitpid(pid, 0)
    assert child != base.jitter(1.0, 0.0, 1.0)  # without the reseed both draw the same
