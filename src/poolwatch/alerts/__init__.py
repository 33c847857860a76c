"""Prometheus rules generated from the metric table (needs PyYAML: ``poolwatch[tools]``)."""

from .rules import ALERT_NAMES, AlertSettings, build_rules, render_rules

__all__ = ["ALERT_NAMES", "AlertSettings", "build_rules", "render_rules"]
