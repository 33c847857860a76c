"""Parsing ``--set name=value`` overrides of `AlertSettings`, with errors that help."""

from __future__ import annotations

import difflib
import re
from dataclasses import fields, replace

from .rules import AlertSettings

_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def apply_overrides(base: AlertSettings, pairs: list[str]) -> AlertSettings:
    """*base* with each ``name=value`` applied; ValueError names the bad one."""
    types = {f.name: f.type for f in fields(AlertSettings) if f.name != "extra_labels"}
    changes: dict[str, object] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"--set {pair!r}: expected name=value")
        if name not in types:
            close = difflib.get_close_matches(name, types, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"--set: unknown setting {name!r}{hint}; see --list")
        default = getattr(base, name)
        if isinstance(default, float):
            try:
                value: object = float(raw)
            except ValueError:
                raise ValueError(f"--set {name}: {raw!r} is not a number") from None
        elif name.endswith(("_for", "window", "interval", "memory")):
            if not _DURATION.match(raw):
                raise ValueError(f"--set {name}: {raw!r} is not a PromQL duration like 5m or 90s")
            value = raw
        else:
            value = raw
        changes[name] = value
    return replace(base, **changes)  # type: ignore[arg-type]
