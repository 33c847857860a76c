"""Parsing ``--set name=value`` overrides of `AlertSettings`, with errors that help."""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import fields, replace

from .rules import AlertSettings

_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
#: label lists that an empty value would turn into `by ()`: one server, one job, for all
_NON_EMPTY_LABELS = ("server_labels", "job_labels")


def _label_list(name: str, raw: str) -> str:
    """*raw*, a comma-separated list of label names, checked as Prometheus checks them.

    A bad name would be written into every rule and Prometheus would refuse the file.
    """
    names = [n.strip() for n in raw.split(",") if n.strip()]
    for label in names:
        if not _LABEL_NAME.match(label):
            raise ValueError(
                f"--set {name}: {label!r} is not a Prometheus label name"
                " (letters, digits and _, comma-separated)"
            )
    if not names and name in _NON_EMPTY_LABELS:
        raise ValueError(f"--set {name} needs at least one label, e.g. {name}=job")
    return raw


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
                number = float(raw)
            except ValueError:
                raise ValueError(f"--set {name}: {raw!r} is not a number") from None
            if not math.isfinite(number):
                # a threshold of nan never compares true: the alert could never fire
                raise ValueError(f"--set {name}: {raw!r} is not a finite number")
            value: object = number
        elif name.endswith(("_for", "window", "interval", "memory")):
            if not _DURATION.match(raw):
                raise ValueError(f"--set {name}: {raw!r} is not a PromQL duration like 5m or 90s")
            value = raw
        elif name.endswith("_labels"):
            value = _label_list(name, raw)
        else:
            value = raw
        changes[name] = value
    return replace(base, **changes)  # type: ignore[arg-type]
