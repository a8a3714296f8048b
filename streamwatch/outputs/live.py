"""The live page's HTTP routes: the page itself (HTML, JS and CSS shipped in the package,
nothing fetched from elsewhere), ``GET /api/state`` (the worker's latest snapshot) and
``POST /api/cmd/<id>`` (an operator command, through the same validation and worker path as
one over MQTT).

A command must be sent as ``Content-Type: application/json``: a browser sends that
cross-site only after a CORS preflight, which this server never answers, so another site
cannot make an operator's browser post commands with its cached basic-auth credentials.
Commands from the page are taken only behind basic auth or on a loopback bind
(:func:`commands_allowed`); otherwise the page is read-only.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any

log = logging.getLogger(__name__)

PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/live": ("index.html", "text/html; charset=utf-8"),
    "/live/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/live/style.css": ("style.css", "text/css; charset=utf-8"),
}
MAX_BODY = 4096
CMD = "/api/cmd/"

Snapshot = Callable[[float], dict[str, Any] | None]
Submit = Callable[[str, bytes], dict[str, object]]


def commands_allowed(host: str, basic_auth: bool) -> bool:
    """Whether the page may send commands: only behind basic auth, or on a loopback bind (an
    open port on the network must not let anyone mute alerts)."""
    if basic_auth:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _page_file(name: str) -> bytes:
    return (resources.files("streamwatch.outputs") / "page" / name).read_bytes()


def _json(start_response: Callable[..., Any], status: str, doc: object) -> list[bytes]:
    start_response(status, [("Content-Type", "application/json"), ("Cache-Control", "no-store")])
    return [json.dumps(doc).encode()]


def routes(
    snapshot: Snapshot, submit: Submit | None
) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes] | None]:
    """The live page's WSGI routes (None for any other path). ``submit`` None: commands off,
    the page is read-only."""
    files = {path: (_page_file(name), ctype) for path, (name, ctype) in PAGE_FILES.items()}

    def handle(
        environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes] | None:
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")
        if path in files and method in ("GET", "HEAD"):
            body, ctype = files[path]
            start_response("200 OK", [("Content-Type", ctype), ("Cache-Control", "no-cache")])
            return [body]
        if path == "/api/state":
            snap = snapshot(2.0)
            if snap is None:
                return _json(
                    start_response, "503 Service Unavailable", {"error": "no snapshot yet"}
                )
            return _json(start_response, "200 OK", {**snap, "commands": submit is not None})
        if path.startswith(CMD):
            # PEP 3333: the server already %-decoded PATH_INFO, as latin-1; ids are UTF-8.
            target = path[len(CMD) :].encode("latin-1").decode("utf-8", "replace")
            return _command(environ, start_response, target, method, submit)
        return None

    return handle


def _command(
    environ: dict[str, Any],
    start_response: Callable[..., Any],
    target: str,
    method: str,
    submit: Submit | None,
) -> list[bytes]:
    if method != "POST":
        start_response(
            "405 Method Not Allowed", [("Allow", "POST"), ("Content-Type", "text/plain")]
        )
        return [b"POST a JSON command\n"]
    if submit is None:
        return _json(start_response, "403 Forbidden", {"ok": False, "error": "commands are off"})
    ctype = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        return _json(
            start_response,
            "415 Unsupported Media Type",
            {"ok": False, "error": "send the command as Content-Type: application/json"},
        )
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = -1
    if not 0 < length <= MAX_BODY:
        return _json(
            start_response,
            "400 Bad Request",
            {"ok": False, "error": f"a command body is 1 to {MAX_BODY} bytes"},
        )
    body = environ["wsgi.input"].read(length)
    result = submit(target, body)
    return _json(start_response, "200 OK" if result.get("ok") else "400 Bad Request", result)
