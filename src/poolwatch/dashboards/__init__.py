"""Grafana dashboards generated with grafana-foundation-sdk (needs ``poolwatch[tools]``)."""
