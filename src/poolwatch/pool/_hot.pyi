# Types of the compiled blocks (_hot.c); see _compiled.py for when they are used.
from collections.abc import Callable
from typing import Any

class Desk:
    fast: bool
    instant: int
    def __init__(self, pool: Any) -> None: ...
    def lend(self, timeout: float | None = None) -> Any: ...

def set_fallbacks(
    enter: Callable[..., Any], exit: Callable[..., Any], holds_fold_at: int
) -> None: ...
