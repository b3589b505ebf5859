"""Mistakes in the set-up, found before a command starts: one line that names the fix, not a traceback.

`stream-app` (``cli.main``) prints a :class:`StartupError` as one line on stderr and exits with its
code. What is checked here is what otherwise surfaces deep inside Faust or aiohttp (a taken port);
the Kafka check lives in :mod:`stream_app.kafka.preflight`, the model check in
:func:`stream_app.models.onnx_model.load_configured`.
"""

from __future__ import annotations

import errno
import socket


class StartupError(Exception):
    """A command cannot start until the user fixes something; the message says what and how."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def check_web_port(host: str, port: int) -> None:
    """Bind ``host:port`` once, as the worker's web server will: a taken port fails here, in one line.

    ``SO_REUSEADDR`` as aiohttp sets it, so a port held only by connections in TIME_WAIT still passes."""
    if port == 0:  # the system picks a free port
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"port {port} on {host} is already in use (STREAM_APP_WEB_PORT={port}): stop the "
                               "other process or set STREAM_APP_WEB_PORT to a free port") from None
        raise StartupError(f"cannot listen on {host}:{port} (STREAM_APP_WEB_HOST={host}, STREAM_APP_WEB_PORT="
                           f"{port}): {exc.strerror or exc}; use an address of this machine and a free port "
                           "above 1023") from None
