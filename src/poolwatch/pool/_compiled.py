"""Whether a sync pool's `connection()` blocks can use the compiled fast path.

`_hot` (a C extension, `_hot.c`) does a block's take and give-back without taking the
pool lock, relying on the GIL instead (its header says how). setup.py builds it on
GIL builds of CPython, as an optional extension: where it is missing (no compiler,
PyPy, a free-threaded CPython) the Python blocks run, which take the lock.

The compiled code reads and writes a few attributes of the pool's connections, and
must run no Python code while it does: so it is used only when the connection class
can run no Python code on those attributes (a property, `__setattr__`,
`__getattribute__` or `__getattr__` of its own), nor as a dictionary key (a `__hash__`
or `__eq__` of its own). Of the pool it uses the containers its desk takes when it is
made, and flags the pool keeps in the desk (`desk.surplus`, from `_nconns` and
`_max_size`): so the pool class must not compute those. The `_idle_put` the blocks
call is the one the desk took, which it refuses unless it is the idle deque's own
append or appendleft.
"""

from __future__ import annotations

import os
from typing import Any

#: Set to 1 to make every pool use the Python blocks (to compare, or to rule the
#: compiled path out when looking for a fault).
PURE_PYTHON_VARIABLE = "POOLWATCH_PURE_PYTHON"

# What the compiled blocks read or write with the GIL as their only lock, or what
# the pool copies into their desk (the pool's sizes, as desk.surplus).
_POOL_ATTRIBUTES = ("_nconns", "_max_size")
_CONNECTION_ATTRIBUTES = ("_expire_at", "_pool", "pgconn")


def load(block_class: Any) -> Any:
    """The compiled desk type for *block_class*'s pools, or None (async, or not built).

    *block_class* is the Python block (`_Borrow`): its methods are what the compiled
    ones call for everything but the fast case.
    """
    if hasattr(block_class, "__aenter__") or os.environ.get(PURE_PYTHON_VARIABLE) == "1":
        return None
    try:
        from ._hot import Desk, set_fallbacks
    except ImportError:
        return None
    set_fallbacks(block_class.__enter__, block_class.__exit__)
    return Desk


def plain_attributes(cls: type, names: tuple[str, ...]) -> bool:
    """True if reading or writing *names* on a *cls* instance runs no Python code."""
    if (
        cls.__setattr__ is not object.__setattr__  # type: ignore[comparison-overlap]
        or cls.__getattribute__ is not object.__getattribute__  # type: ignore[comparison-overlap]
        or hasattr(cls, "__getattr__")
    ):
        return False
    return not any(name in vars(klass) for klass in cls.__mro__ for name in names)


def desk_for(desk_type: Any, pool: Any) -> Any:
    """A desk for *pool*, or None if its class or its connection class rule it out."""
    if desk_type is None:
        return None
    if not plain_attributes(type(pool), _POOL_ATTRIBUTES):
        return None
    if not plain_attributes(pool.connection_class, _CONNECTION_ATTRIBUTES):
        return None
    if not identity_keyed(pool.connection_class):
        return None
    try:
        return desk_type(pool, pool._agg.use.bounds)
    except TypeError:  # containers of another type than the desk relies on (it says which)
        return None


def identity_keyed(cls: type) -> bool:
    """True if a *cls* instance as a dictionary key runs no Python code.

    The compiled blocks add and remove their connection in the pool's `_out` dict:
    a `__hash__` or `__eq__` of the connection class's own would run there.
    """
    return cls.__hash__ is object.__hash__ and cls.__eq__ is object.__eq__  # type: ignore[comparison-overlap]
