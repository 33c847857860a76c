# Types of the compiled blocks (_hot.c); see _compiled.py for when they are used.
from collections.abc import Callable
from typing import Any

class Desk:
    fast: bool
    instant: int
    @property
    def held(self) -> int: ...
    def __init__(self, pool: Any) -> None: ...
    def lend(self, timeout: float | None = None) -> Any: ...
    def move_holds(self, holds: list[float]) -> None: ...

READS_LOCK_BYTE: bool

def set_fallbacks(
    enter: Callable[..., Any], exit: Callable[..., Any], holds_fold_at: int
) -> None: ...
