"""Ports for `poolwatch demo`, claimed up front so that a taken one is reported in one line."""

from __future__ import annotations

import errno
import socket


class StartError(RuntimeError):
    """A part of the demo could not start; the message says why and what to do."""


class PortInUse(StartError):
    """A port the demo needs is taken; the message names the flag that picks another."""


def _in_use_message(host: str, port: int, flag: str) -> str:
    return f"port {port} on {host} is already in use by another program: choose another with {flag}"


def listen_socket(host: str, port: int, flag: str) -> socket.socket:
    """A socket bound to (*host*, *port*), for uvicorn to serve on; PortInUse if taken.

    Binding it here rather than in uvicorn means there is no window in which another
    program could take the port between our check and the server's start.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as ex:
        sock.close()
        if ex.errno == errno.EADDRINUSE:
            raise PortInUse(_in_use_message(host, port, flag)) from None
        raise
    sock.set_inheritable(True)
    return sock


def is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def choose_port(host: str, wanted: int, *, explicit: bool, flag: str) -> tuple[int, str | None]:
    """*wanted* if it is free; else a free port if *wanted* was only a default.

    Returns the port and, when it differs from *wanted*, a note saying why. A port the
    user asked for is never silently replaced: PortInUse says which flag to change.
    """
    if is_free(host, wanted):
        return wanted, None
    if explicit:
        raise PortInUse(_in_use_message(host, wanted, flag))
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port, f"port {wanted} is in use, so {flag.removeprefix('--')} is {port}"
