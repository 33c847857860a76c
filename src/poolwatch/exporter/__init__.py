"""The FastAPI exporter and helpers for FastAPI apps (needs the ``[exporter]`` extra)."""

from .app import Exporter, create_app, create_router
from .helpers import ExporterThread, connection_dependency, pool_lifespan, start_exporter

__all__ = [
    "Exporter",
    "ExporterThread",
    "connection_dependency",
    "create_app",
    "create_router",
    "pool_lifespan",
    "start_exporter",
]
