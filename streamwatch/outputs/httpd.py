"""The HTTP endpoint: /metrics (prometheus-client's exposition), /healthz and /readyz, and the
live page (:mod:`streamwatch.outputs.live`) when it is on.

``/healthz`` answers 200 while the worker loop turns (liveness); ``/readyz`` answers 200 only
when the broker connection is up and a model is loaded, else 503 with the reason.
"""

from __future__ import annotations

import base64
import hmac
import logging
import ssl
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from streamwatch.config import ConfigError

log = logging.getLogger(__name__)

Check = Callable[[], str | None]
"""Returns None when fine, else the reason it is not."""
Routes = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes] | None]
"""Extra routes: a response, or None when the path is not theirs."""


class _Quiet(WSGIRequestHandler):
    timeout = 30.0
    """Per-connection socket timeout: a client that stalls (or never finishes its TLS
    handshake) holds only its own thread, and only this long."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingWSGIServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A failed TLS handshake or a dropped client: that connection's problem, not a traceback
        # on stderr (a port scan would otherwise print one per probe).
        log.debug("metrics connection from %s failed: %s", client_address, sys.exc_info()[1])


def make_app(
    registry: CollectorRegistry,
    live: Check,
    ready: Check,
    basic_auth: tuple[str, str] | None = None,
    routes: Routes | None = None,
) -> Callable[..., Iterable[bytes]]:
    """A WSGI app serving /metrics, /healthz and /readyz, and ``routes`` (the live page),
    all behind basic auth when it is set."""
    metrics_app = make_wsgi_app(registry)
    expected: bytes | None = None
    if basic_auth is not None:
        token = base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode()
        expected = f"Basic {token}".encode()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        # WSGI hands headers over as latin-1 text; compared as bytes, a non-ASCII header is
        # just a wrong password (compare_digest refuses non-ASCII str with a TypeError).
        given = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1", "replace")
        if expected is not None and not hmac.compare_digest(given, expected):
            start_response(
                "401 Unauthorized",
                [("WWW-Authenticate", 'Basic realm="streamwatch"'), ("Content-Type", "text/plain")],
            )
            return [b"unauthorized\n"]
        if path in ("/healthz", "/readyz"):
            reason = (live if path == "/healthz" else ready)()
            status = "200 OK" if reason is None else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [(reason or "ok").encode() + b"\n"]
        if routes is not None and (body := routes(environ, start_response)) is not None:
            return body
        return metrics_app(environ, start_response)

    return app


def serve(
    app: Callable[..., Iterable[bytes]],
    host: str,
    port: int,
    certfile: Path | None = None,
    keyfile: Path | None = None,
) -> WSGIServer:
    """Serve ``app`` on a daemon thread; ``port`` 0 takes a free port (see server_port)."""
    ctx = None
    if certfile and keyfile:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(str(certfile), str(keyfile))
        except OSError as exc:  # ssl.SSLError is an OSError too
            why = exc.strerror if exc.strerror and not isinstance(exc, ssl.SSLError) else exc
            raise ConfigError(
                [f"metrics.tls_cert_file/tls_key_file: cannot load {certfile}: {why}"]
            ) from None
    try:
        server = make_server(host, port, app, _Server, handler_class=_Quiet)
    except OSError as exc:
        raise ConfigError(
            [f"metrics.host/port: cannot listen on {host}:{port}: {exc.strerror or exc}"]
        ) from None
    if ctx is not None:
        # The handshake runs on the connection's first read, in its own request thread: done in
        # accept() it would let one idle TCP connection block the endpoint for everyone.
        server.socket = ctx.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    log.info("metrics on http%s://%s:%d/metrics", "s" if certfile else "", host, server.server_port)
    return server
