"""Security against a real Mosquitto: TLS with a CA made here, client certificates, a password
file, refused credentials without a tight retry loop, secrets kept out of logs and /metrics, and
the metrics endpoint's bind address, basic auth and HTTPS.

Certificates come from the ``openssl`` command line (no extra Python dependency): a CA, a
broker certificate with SAN ``IP:127.0.0.1, DNS:localhost``, a client certificate, and a second,
untrusted CA. Mosquitto requires a client certificate *and* a password from its password file
(made with ``mosquitto_passwd``).
"""

from __future__ import annotations

import base64
import logging
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import paho.mqtt.client as mqtt
import pytest
from prometheus_client import CollectorRegistry

from streamwatch.commands import main
from streamwatch.config import Config, from_mapping
from streamwatch.daemon import Daemon
from streamwatch.ingest.mqtt import MQTTLink
from tests.helpers import Mosquitto, free_port, wait_until

USER = "sw-daemon"
PASSWORD = "Tr0ub4dor&3-not-in-logs"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ec_key_and_csr(d: Path, name: str, cn: str) -> None:
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d,
    )  # fmt: skip


def _ca(d: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d,
    )  # fmt: skip


def _sign(d: Path, name: str, ca: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d,
    )  # fmt: skip


@dataclass
class PKI:
    """Paths of everything the tests need."""

    dir: Path
    ca: Path
    server_crt: Path
    server_key: Path
    client_crt: Path
    client_key: Path
    other_ca: Path
    wrong_name_crt: Path
    wrong_name_key: Path


def make_pki(d: Path) -> PKI:
    """A CA, a broker cert for 127.0.0.1/localhost, a client cert, an untrusted CA, and a
    broker cert signed by the right CA but naming another host."""
    if not shutil.which("openssl"):
        pytest.fail("openssl not found (apt-get install openssl)")
    _ca(d, "ca")
    _ca(d, "other-ca")
    _ec_key_and_csr(d, "server", "sw-test-broker")
    _sign(
        d,
        "server",
        "ca",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    _ec_key_and_csr(d, "wrongname", "sw-test-broker")
    _sign(
        d,
        "wrongname",
        "ca",
        "subjectAltName=DNS:broker.elsewhere.example\nextendedKeyUsage=serverAuth\n",
    )
    _ec_key_and_csr(d, "client", USER)
    _sign(d, "client", "ca", "extendedKeyUsage=clientAuth\n")
    for f in d.iterdir():
        f.chmod(0o644)  # Mosquitto reads them as its own user
    return PKI(
        d,
        d / "ca.crt",
        d / "server.crt",
        d / "server.key",
        d / "client.crt",
        d / "client.key",
        d / "other-ca.crt",
        d / "wrongname.crt",
        d / "wrongname.key",
    )


def password_file(d: Path, user: str, password: str) -> Path:
    """A Mosquitto password file made with ``mosquitto_passwd -b``."""
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.fail("mosquitto_passwd not found (it comes with the mosquitto package)")
    path = d / "passwd"
    subprocess.run([tool, "-c", "-b", str(path), user, password], check=True, timeout=30)
    path.chmod(0o644)
    return path


def tls_broker(
    d: Path, pki: PKI, *, cert: Path | None = None, key: Path | None = None
) -> Mosquitto:
    """A Mosquitto with only a TLS listener: client cert required, passwords required."""
    port = free_port()
    conf = (
        f"listener {port} 127.0.0.1\n"
        f"cafile {pki.ca}\n"
        f"certfile {cert or pki.server_crt}\n"
        f"keyfile {key or pki.server_key}\n"
        "require_certificate true\n"
        f"password_file {password_file(d, USER, PASSWORD)}\n"
        "allow_anonymous false\n"
        "log_type information\n"
    )
    d.chmod(0o755)
    broker = Mosquitto(d / "broker", extra_conf=conf, port=port)
    broker.start()
    return broker


@pytest.fixture(scope="module")
def pki() -> Iterator[PKI]:
    # Not under pytest's tmp_path: its parents are root-only, and Mosquitto reads these files
    # as its own user.
    d = Path(tempfile.mkdtemp(prefix="sw-pki-"))
    d.chmod(0o755)
    yield make_pki(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def broker(pki: PKI, mosquitto_dir: Path) -> Iterator[Mosquitto]:
    b = tls_broker(mosquitto_dir, pki)
    yield b
    b.stop()


def _cfg(port: int, pki: PKI, *, host: str = "127.0.0.1", **mqtt_extra: Any) -> Config:
    tls: dict[str, Any] = {
        "ca_file": str(pki.ca),
        "cert_file": str(pki.client_crt),
        "key_file": str(pki.client_key),
    }
    tls.update(mqtt_extra.pop("tls", {}))
    mq: dict[str, Any] = {
        "broker": f"mqtts://{host}:{port}",
        "client_id": f"sw-tls-{port}",
        "username": USER,
        "password_env": "SW_TEST_MQTT_PASSWORD",
        "reconnect_min_s": 1.0,
        "reconnect_max_s": 30.0,
        "tls": tls,
    }
    mq.update(mqtt_extra)
    return from_mapping(
        {
            "mqtt": mq,
            "detector": {"type": "gaussian"},
            "learning": {"warmup": 20},
            "metrics": {"host": "127.0.0.1", "port": 0},
        }
    )


def _tls_client(port: int, pki: PKI) -> mqtt.Client:
    """A test client with the right CA, client cert and password."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(str(pki.client_crt), str(pki.client_key))
    c.tls_set_context(ctx)
    c.username_pw_set(USER, PASSWORD)
    return c


def _get(url: str, **kw: Any) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5, **kw) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class _Attempts:
    """Counts the CONNACKs (and failed TCP/TLS attempts) paho's thread sees."""

    def __init__(self, daemon: Daemon) -> None:
        self.connacks: list[str] = []
        self.fails = 0
        link = cast(MQTTLink, daemon.link)
        on_connect, on_fail = link._on_connect, link._on_connect_fail

        def counting_connect(*args: Any) -> None:
            self.connacks.append(str(args[3]))
            on_connect(*args)

        def counting_fail(*args: Any) -> None:
            self.fails += 1
            on_fail(*args)

        link.client.on_connect = counting_connect
        link.client.on_connect_fail = counting_fail


# -- the right credentials -------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("source", ["password_env", "password_file"])
def test_right_ca_cert_and_password_work_end_to_end(
    broker: Mosquitto, pki: PKI, source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if source == "password_env":
        monkeypatch.setenv("SW_TEST_MQTT_PASSWORD", PASSWORD)
        cfg = _cfg(broker.port, pki)
    else:
        secret = tmp_path / "mqtt-password"
        secret.write_text(PASSWORD + "\n")
        cfg = _cfg(broker.port, pki, password_env=None, password_file=str(secret))
    registry = CollectorRegistry()
    daemon = Daemon(cfg, registry=registry)
    daemon.start()
    pub = _tls_client(broker.port, pki)
    try:
        assert daemon.wait_ready(15), daemon.ready()
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        t0 = time.time() - 100
        infos = [
            pub.publish("sensors/tls1", f'{{"value": {1 + 0.01 * (i % 5)}, "ts": {t0 + i}}}', 1)
            for i in range(40)
        ]
        for info in infos:
            info.wait_for_publish(10)
        assert wait_until(
            lambda: (
                registry.get_sample_value("streamwatch_readings_total", {"sensor": "tls1"}) == 40
            )
        )
        assert daemon.ready() is None
    finally:
        pub.disconnect()
        pub.loop_stop()
        daemon.stop()


# -- refusals: clear, and no tight retry loop -----------------------------------------------


def _attempts(broker: Mosquitto) -> int:
    """Connections the broker saw (the port probe at start-up is not one of them)."""
    return broker.log.read_text(errors="replace").count("New connection from")


def _refused(daemon: Daemon, broker: Mosquitto, watch_s: float = 4.0) -> tuple[str, int]:
    """Run the daemon for ``watch_s`` against a broker that refuses it: (reason, attempts)."""
    daemon.start()
    try:
        assert wait_until(lambda: _attempts(broker) >= 1, timeout=30)
        first = time.monotonic()
        time.sleep(watch_s)  # an observation window, not a timing assertion
        attempts = _attempts(broker)
        assert time.monotonic() - first >= watch_s
        assert daemon.live() is None, "a refused connection must not stop the worker"
        assert not daemon.link.connected.is_set()
        reason = daemon.ready()
        assert reason is not None
        code, body = _get(f"http://127.0.0.1:{daemon.metrics_port}/readyz")
        assert code == 503 and reason in body
        return reason, attempts
    finally:
        daemon.stop()


@pytest.mark.integration
def test_wrong_password_is_refused_clearly_and_not_retried_in_a_tight_loop(
    broker: Mosquitto, pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SW_TEST_MQTT_PASSWORD", "not-the-password")
    daemon = Daemon(_cfg(broker.port, pki), registry=CollectorRegistry())
    reason, attempts = _refused(daemon, broker)
    # Mosquitto 2.0 answers a bad password over MQTT 5 with "Not authorized" (135).
    assert "refused" in reason and ("Not authorized" in reason or "password" in reason), reason
    # reconnect_min_s = 1 doubling (1, 2, 4 s...): about 3 attempts in 4 s, never dozens.
    assert 1 <= attempts <= 5, attempts
    assert "not authorised" in broker.log.read_text()


@pytest.mark.integration
def test_untrusted_ca_is_refused_clearly_not_a_crash(broker: Mosquitto, pki: PKI, monkeypatch):
    monkeypatch.setenv("SW_TEST_MQTT_PASSWORD", PASSWORD)
    cfg = _cfg(broker.port, pki, tls={"ca_file": str(pki.other_ca)})
    daemon = Daemon(cfg, registry=CollectorRegistry())
    reason, attempts = _refused(daemon, broker)
    assert "certificate verify failed" in reason, reason
    assert 1 <= attempts <= 5, attempts


@pytest.mark.integration
def test_broker_refuses_a_daemon_without_client_certificate(
    broker: Mosquitto, pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SW_TEST_MQTT_PASSWORD", PASSWORD)
    cfg = _cfg(broker.port, pki, tls={"cert_file": None, "key_file": None})
    daemon = Daemon(cfg, registry=CollectorRegistry())
    reason, attempts = _refused(daemon, broker)
    assert "closed the connection before accepting it" in reason, reason
    assert 1 <= attempts <= 5, attempts
    assert "peer did not return a certificate" in broker.log.read_text()


@pytest.mark.integration
def test_hostname_is_checked_by_default(
    pki: PKI, mosquitto_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker's certificate is signed by the trusted CA but names another host."""
    monkeypatch.setenv("SW_TEST_MQTT_PASSWORD", PASSWORD)
    broker = tls_broker(mosquitto_dir, pki, cert=pki.wrong_name_crt, key=pki.wrong_name_key)
    try:
        daemon = Daemon(_cfg(broker.port, pki), registry=CollectorRegistry())
        reason, _ = _refused(daemon, broker, watch_s=0.5)
        assert "certificate verify failed" in reason and "mismatch" in reason, reason

        cfg = _cfg(broker.port, pki, tls={"check_hostname": False}, client_id="sw-tls-nocheck")
        daemon = Daemon(cfg, registry=CollectorRegistry())
        daemon.start()
        try:
            assert daemon.wait_ready(15), daemon.ready()
        finally:
            daemon.stop()
    finally:
        broker.stop()


# -- secrets ----------------------------------------------------------------------------------


@pytest.mark.integration
def test_secrets_never_in_logs_metrics_or_check_config(
    broker: Mosquitto,
    pki: PKI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    http_secret = "h77p-basic-auth-secret"
    monkeypatch.setenv("SW_TEST_MQTT_PASSWORD", PASSWORD)
    monkeypatch.setenv("SW_TEST_HTTP_PASSWORD", http_secret)
    caplog.set_level(logging.DEBUG)  # everything, paho's packet log included
    cfg = _cfg(broker.port, pki)
    cfg = cfg.model_copy(
        update={
            "metrics": cfg.metrics.model_copy(
                update={
                    "basic_auth_user": "prom",
                    "basic_auth_password_env": "SW_TEST_HTTP_PASSWORD",
                }
            )
        }
    )
    registry = CollectorRegistry()
    daemon = Daemon(cfg, registry=registry)
    daemon.start()
    try:
        assert daemon.wait_ready(15), daemon.ready()
        auth = urllib.request.HTTPBasicAuthHandler()
        url = f"http://127.0.0.1:{daemon.metrics_port}/metrics"
        auth.add_password("streamwatch", url, "prom", http_secret)
        with urllib.request.build_opener(auth).open(url, timeout=5) as r:
            body = r.read().decode()
        assert "streamwatch_mqtt_connected 1.0" in body
    finally:
        daemon.stop()
    # A refused login logs too: the wrong password must not show either.
    monkeypatch.setenv("SW_TEST_MQTT_PASSWORD", "wr0ng-" + PASSWORD)
    bad = Daemon(_cfg(broker.port, pki, client_id="sw-bad"), registry=CollectorRegistry())
    bad.start()
    assert wait_until(lambda: "refused" in (bad.link.last_error or ""), timeout=10)
    bad.stop()

    conf = tmp_path / "sw.toml"
    secret = tmp_path / "secret"
    secret.write_text(PASSWORD)
    conf.write_text(
        f'[mqtt]\nbroker = "mqtts://127.0.0.1:{broker.port}"\nusername = "{USER}"\n'
        f'password_file = "{secret}"\n[metrics]\nbasic_auth_user = "prom"\n'
        'basic_auth_password_env = "SW_TEST_HTTP_PASSWORD"\n'
    )
    capsys.readouterr()
    assert main(["check-config", str(conf)]) == 0
    out = capsys.readouterr()
    text = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert any(r.name.startswith("paho") for r in caplog.records), "paho's log was not captured"
    for where, blob in (("logs", text), ("/metrics", body), ("check-config", out.out + out.err)):
        for s in (PASSWORD, http_secret, "wr0ng-"):
            assert s not in blob, f"secret {s!r} in {where}"


# -- the metrics endpoint -------------------------------------------------------------------


def _metrics_only(**metrics: Any) -> Config:
    """A daemon config whose broker is unreachable: the endpoint serves regardless."""
    return from_mapping(
        {
            "mqtt": {"broker": f"mqtt://127.0.0.1:{free_port()}", "reconnect_min_s": 5.0},
            "detector": {"type": "gaussian"},
            "metrics": {"host": "127.0.0.1", "port": 0, **metrics},
        }
    )


def test_metrics_bind_address_is_configurable() -> None:
    daemon = Daemon(_metrics_only(host="127.0.0.2"), registry=CollectorRegistry())
    daemon.start()
    try:
        port = daemon.metrics_port
        assert _get(f"http://127.0.0.2:{port}/metrics")[0] == 200
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    finally:
        daemon.stop()


def test_metrics_basic_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SW_TEST_HTTP_PASSWORD", "s3cret")
    cfg = _metrics_only(basic_auth_user="prom", basic_auth_password_env="SW_TEST_HTTP_PASSWORD")
    daemon = Daemon(cfg, registry=CollectorRegistry())
    daemon.start()
    try:
        base = f"http://127.0.0.1:{daemon.metrics_port}"
        for path in ("/metrics", "/healthz", "/readyz"):
            assert _get(base + path)[0] == 401
        for user, pw, want in (
            ("prom", "s3cret", 200),
            ("prom", "wrong", 401),
            ("x", "s3cret", 401),
        ):
            req = urllib.request.Request(base + "/metrics")
            token = base64.b64encode(f"{user}:{pw}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
            code, body = _get(req)  # type: ignore[arg-type]
            assert code == want, (user, pw, code)
            if want == 200:
                assert "streamwatch_build_info" in body
        # A non-ASCII header (raw latin-1 bytes on the wire) is a 401, not a 500 and a
        # traceback (issue 12, item 6).
        with socket.create_connection(("127.0.0.1", daemon.metrics_port), timeout=5) as sock:
            sock.sendall(b"GET /metrics HTTP/1.0\r\nAuthorization: Basic \xe9\xe8\xff\r\n\r\n")
            reply = sock.recv(200)
        assert reply.split(b"\r\n", 1)[0].endswith(b"401 Unauthorized"), reply
    finally:
        daemon.stop()


def test_metrics_over_https(pki: PKI) -> None:
    cfg = _metrics_only(tls_cert_file=str(pki.server_crt), tls_key_file=str(pki.server_key))
    daemon = Daemon(cfg, registry=CollectorRegistry())
    daemon.start()
    try:
        port = daemon.metrics_port
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        code, body = _get(f"https://127.0.0.1:{port}/metrics", context=ctx)
        assert code == 200 and "streamwatch_build_info" in body
        code, _ = _get(f"https://localhost:{port}/healthz", context=ctx)
        assert code == 200
        # Plain HTTP to the TLS port gets no metrics.
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        # A client that connects and never starts its handshake blocks no one else.
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            code, _ = _get(f"https://127.0.0.1:{port}/healthz", context=ctx)
            assert code == 200
        # And a client that does not trust the CA is refused by its own check.
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(
                f"https://127.0.0.1:{port}/metrics",
                timeout=5,
                context=ssl.create_default_context(cafile=str(pki.other_ca)),
            )
    finally:
        daemon.stop()
