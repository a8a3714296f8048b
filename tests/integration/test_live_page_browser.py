"""The live page in a real headless Chromium (Debian's chromium + chromium-driver, driven by
selenium) against a running daemon on a real Mosquitto: sensors and an alert appear, the
mute button mutes, and the page shows it. A screenshot is left in the test's temp dir."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from streamwatch.config import from_mapping
from streamwatch.daemon import Daemon
from tests.helpers import Collector, Mosquitto, Publisher, wait_until

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
)


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("chromium/chromedriver not found (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.add_argument("--window-size=1400,1000")
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _retry(action: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Run ``action`` until it returns something truthy: the page redraws its tables every
    poll, so an element found a moment ago may be gone (stale) now."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            out = action()
            if out:
                return out
        except (NoSuchElementException, StaleElementReferenceException):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {action}")
        time.sleep(0.2)


def test_page_shows_sensors_and_an_alert_and_mutes_from_a_button(
    browser: Any, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    cfg = from_mapping(
        {
            "mqtt": {"broker": mosquitto.url, "client_id": f"sw-page-{mosquitto.port}"},
            "learning": {"warmup": 200},
            "alerts": {"raise_k": 2, "raise_n": 3, "clear_m": 5},
            "metrics": {"host": "127.0.0.1", "port": 0},
            "state_dir": str(tmp_path / "state"),
        }
    )
    registry = CollectorRegistry()
    daemon = Daemon(cfg, registry=registry)
    out = Collector(mosquitto.port, ["streamwatch/#"])
    daemon.start()
    try:
        assert daemon.wait_ready(10)
        pub = Publisher(mosquitto.port)
        rng = np.random.default_rng(11)
        t0 = time.time() - 1000
        for i in range(300):
            pub.reading("line1/flow", 10.0 + rng.normal(0, 0.5), t0 + i)
            pub.reading("line1/temp", 50.0 + rng.normal(0, 0.5), t0 + i)
        for i in range(300, 306):  # a spike on the flow
            pub.reading("line1/flow", 40.0, t0 + i)
            pub.reading("line1/temp", 50.0 + rng.normal(0, 0.5), t0 + i)
        pub.close()
        assert out.wait_for(lambda c: len(c.json_on("streamwatch/alerts/line1/flow")) >= 1)

        browser.get(f"http://127.0.0.1:{daemon.metrics_port}/")

        def row(sensor: str) -> Any:
            return browser.find_element(By.CSS_SELECTOR, f'#sensors tr[data-id="{sensor}"]')

        _retry(lambda: row("line1/flow") and row("line1/temp"))
        _retry(lambda: row("line1/temp").get_attribute("data-state") == "armed")
        alert_row = _retry(
            lambda: browser.find_element(By.CSS_SELECTOR, "#alerts tbody tr").text.strip()
        )
        assert "line1/flow" in alert_row and "raised" in alert_row
        # The explanation: the robust detector's parts, each a share of the threshold.
        assert "level" in alert_row and "point" in alert_row
        # A chart of recent scores was drawn.
        _retry(lambda: row("line1/temp").find_element(By.CSS_SELECTOR, "svg polyline.score"))

        def click_mute() -> bool:
            row("line1/temp").find_element(By.CSS_SELECTOR, 'button[data-action="mute"]').click()
            return True

        _retry(click_mute)
        _retry(lambda: row("line1/temp").get_attribute("data-state") == "muted")
        assert "muted" in row("line1/temp").text
        assert "done" in browser.find_element(By.ID, "status").text
        # Through the same command path as MQTT: the retained state says muted.
        assert wait_until(
            lambda: any(d.get("muted") for d in out.json_on("streamwatch/state/line1/temp"))
        )
        assert (
            registry.get_sample_value(
                "streamwatch_commands_total", {"action": "mute", "result": "ok"}
            )
            == 1
        )
        shot = tmp_path / "live-page.png"
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        daemon.stop()
        out.close()
