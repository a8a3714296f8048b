"""The live page's HTTP routes as a WSGI app: behind the same basic auth as /metrics, the
page's files from the package, commands only as JSON POSTs, and read-only without commands."""

from __future__ import annotations

import io
import json
from typing import Any

from prometheus_client import CollectorRegistry

from streamwatch.outputs import httpd, live


def _call(app: Any, path: str, method: str = "GET", body: bytes = b"", **headers: str) -> tuple:
    got: dict[str, Any] = {}

    def start_response(status: str, hdrs: list[tuple[str, str]]) -> None:
        got["status"], got["headers"] = status, dict(hdrs)

    environ = {
        "PATH_INFO": path,
        "REQUEST_METHOD": method,
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "SERVER_NAME": "x",
        "SERVER_PORT": "1",
        "wsgi.url_scheme": "http",
        "QUERY_STRING": "",
        **headers,
    }
    out = b"".join(app(environ, start_response))
    return int(got["status"].split()[0]), got["headers"], out


SNAP = {"now": 1.0, "detector": "robust", "sensors": [], "alerts": []}


def _app(auth: tuple[str, str] | None = None, commands: bool = True) -> tuple[Any, list]:
    sent: list[tuple[str, bytes]] = []

    def submit(target: str, payload: bytes) -> dict[str, object]:
        sent.append((target, payload))
        return {"ok": True, "error": None, "action": "mute", "id": target}

    routes = live.routes(lambda wait: SNAP, submit if commands else None)
    app = httpd.make_app(CollectorRegistry(), lambda: None, lambda: None, auth, routes)
    return app, sent


def test_page_files_and_state_are_served_from_the_package() -> None:
    app, _ = _app()
    status, headers, body = _call(app, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'src="/live/app.js"' in body and b"https://" not in body
    status, headers, body = _call(app, "/live/app.js")
    assert status == 200 and b"/api/state" in body and b"textContent" in body
    status, _, body = _call(app, "/api/state")
    assert status == 200 and json.loads(body) == {**SNAP, "commands": True}
    assert _call(app, "/metrics")[0] == 200  # metrics still there


def test_basic_auth_covers_the_page_and_commands() -> None:
    app, sent = _app(auth=("op", "secret"))
    for path, method in (("/", "GET"), ("/api/state", "GET"), ("/api/cmd/a", "POST")):
        assert _call(app, path, method, b'{"action": "unmute"}')[0] == 401
    assert sent == []
    ok = "Basic b3A6c2VjcmV0"  # op:secret
    assert _call(app, "/api/state", HTTP_AUTHORIZATION=ok)[0] == 200


def test_commands_only_as_json_posts_of_bounded_size() -> None:
    app, sent = _app()
    cmd = b'{"action": "mute", "for_s": 60}'
    assert _call(app, "/api/cmd/a", "GET")[0] == 405
    assert _call(app, "/api/cmd/a", "POST", cmd, CONTENT_TYPE="text/plain")[0] == 415
    assert _call(app, "/api/cmd/a", "POST", b"x" * 5000, CONTENT_TYPE="application/json")[0] == 400
    assert sent == []
    status, _, body = _call(
        app, "/api/cmd/line1/fl\u00c3\u00b6w", "POST", cmd, CONTENT_TYPE="application/json"
    )
    assert status == 200 and json.loads(body)["ok"] is True
    assert sent == [("line1/fl\u00f6w", cmd)]  # UTF-8 ids, as PEP 3333 passes them


def test_without_commands_the_page_is_read_only() -> None:
    app, sent = _app(commands=False)
    status, _, body = _call(
        app, "/api/cmd/a", "POST", b'{"action": "unmute"}', CONTENT_TYPE="application/json"
    )
    assert status == 403 and "off" in json.loads(body)["error"]
    assert json.loads(_call(app, "/api/state")[2])["commands"] is False
    assert sent == []


def test_page_commands_need_basic_auth_unless_bound_to_loopback() -> None:
    assert live.commands_allowed("127.0.0.1", basic_auth=False)
    assert live.commands_allowed("::1", basic_auth=False)
    assert live.commands_allowed("localhost", basic_auth=False)
    assert not live.commands_allowed("0.0.0.0", basic_auth=False)
    assert not live.commands_allowed("192.168.1.20", basic_auth=False)
    assert not live.commands_allowed("plant-box.local", basic_auth=False)
    assert live.commands_allowed("0.0.0.0", basic_auth=True)
