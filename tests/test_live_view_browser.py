"""The status page (docs/live-view.md#status-page) in a real headless browser.

Debian's ``chromium`` and ``chromium-driver`` (installed by
``scripts/test.sh``), driven by Selenium, against a real ``varta-watch`` with
real agents. A missing browser fails these tests: it is not a skip.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from watch_e2e import TOKEN_HEX, Agent, Watch, http_get, token_file

T = TypeVar("T")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: The page's default refresh interval (the ``#interval`` select), seconds.
REFRESH_S = 2.0
#: /agents bodies are cached this long by the daemon.
CACHE_S = 1.0


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    for path in (CHROMIUM, CHROMEDRIVER):
        assert shutil.which(path), f"{path} is missing: apt-get install chromium chromium-driver"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(arg)
    opts.add_argument("--window-size=1400,900")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def until(what: str, check: Callable[[], Optional[T]], timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out ({timeout:g} s) waiting for {what}")
        time.sleep(0.05)


def load(driver: webdriver.Chrome, url: str) -> None:
    """Open the page, once: the daemon waits for a request that arrives late
    (docs/observer.md#http-endpoint), so no reload is needed on a loaded host."""
    driver.get(url)
    if not driver.find_elements(By.ID, "agents"):
        raise AssertionError(f"{url}: the status page did not load: {driver.page_source[:300]}")


def rows(driver: webdriver.Chrome) -> list[tuple[str, str]]:
    """``(pid, status)`` of each table row, in page order."""
    got: Any = driver.execute_script(
        "return Array.from(document.querySelectorAll('#agents tbody tr'))"
        ".map(tr => [tr.dataset.pid, tr.dataset.status]);"
    )
    return [(str(p), str(s)) for p, s in got]


def error_text(driver: webdriver.Chrome) -> str:
    el = driver.find_element(By.ID, "error")
    return str(el.text) if el.is_displayed() else ""


def no_csp_or_script_errors(driver: webdriver.Chrome) -> None:
    """No CSP violation or script error: the inline script and style ran under the
    page's own Content-Security-Policy. (Failed fetches are logged too — a 401,
    or a connection the browser opened ahead of time and the daemon closed
    idle, which the page retries — and are not what this checks.)"""
    log = driver.get_log("browser")
    bad = [
        e["message"]
        for e in log
        if "Content Security Policy" in e["message"] or "Uncaught" in e["message"]
    ]
    assert bad == [], bad


def test_page_renders_and_shows_a_hung_agent_within_one_refresh(
    tmp_path: Path, browser: webdriver.Chrome
) -> None:
    watch = Watch(
        tmp_path, "--prom-addr", "127.0.0.1:0", "--prom-rate-limit-per-sec", "0", threshold_ms=400
    )
    healthy, hung = Agent(watch.sock), Agent(watch.sock)
    try:
        load(browser, f"http://{watch.addr}/")
        assert browser.title == "varta — agents"
        until(
            "both agents on the page",
            lambda: {p for p, _ in rows(browser)} == {str(healthy.pid), str(hung.pid)},
        )
        assert {s for _, s in rows(browser)} == {"ok"}
        meta = browser.find_element(By.ID, "meta").text
        assert "threshold 400 ms" in meta and "2 agents" in meta
        hung.stop_process()

        def daemon_says_hung() -> bool:
            resp = http_get(watch.addr or "", None, "/agents?status=hung")
            return f'"pid":{hung.pid},'.encode() in resp

        until("the daemon's hung verdict", daemon_says_hung)
        # The page shows it by its next refresh (plus the daemon's one-second
        # cache and slack for a loaded machine), sorted first.
        until(
            "the hung agent first on the page",
            lambda: rows(browser)[:1] == [(str(hung.pid), "hung")],
            timeout=REFRESH_S + CACHE_S + 3.0,
        )
        assert rows(browser)[1] == (str(healthy.pid), "ok")
        assert "hung 1" in browser.find_element(By.ID, "summary").text
        first = browser.find_element(By.CSS_SELECTOR, "#agents tbody tr td")
        assert first.value_of_css_property("color") != "rgba(0, 0, 0, 1)"  # the style applied
        browser.save_screenshot(str(tmp_path / "status-page.png"))

        # Filters: by status (on the server), and by a unit nobody has.
        Select(browser.find_element(By.ID, "status-filter")).select_by_visible_text("ok")
        until("only the healthy agent", lambda: rows(browser) == [(str(healthy.pid), "ok")])
        Select(browser.find_element(By.ID, "status-filter")).select_by_visible_text("all")
        until("both again", lambda: len(rows(browser)) == 2)
        unit = browser.find_element(By.ID, "unit-filter")
        unit.send_keys("nosuch.service\n")
        until("no agent of that unit", lambda: rows(browser) == [])
        assert "showing 0 of 0 matching (2 tracked)" in browser.find_element(By.ID, "shown").text
        no_csp_or_script_errors(browser)
    finally:
        hung.kill()
        healthy.kill()
        assert watch.stop() == 0, watch.stderr


def test_page_with_a_bearer_token(tmp_path: Path, browser: webdriver.Chrome) -> None:
    token = token_file(tmp_path)
    watch = Watch(
        tmp_path,
        "--prom-addr", "127.0.0.1:0",
        "--prom-token-file", str(token),
        "--prom-rate-limit-per-sec", "0",
    )  # fmt: skip
    agent = Agent(watch.sock)
    try:
        base = f"http://{watch.addr}/"
        # Without the token: an auth error, the token form, no rows.
        load(browser, base)
        until("the auth error", lambda: "401 Unauthorized" in error_text(browser))
        assert browser.find_element(By.ID, "token-form").is_displayed()
        assert rows(browser) == []
        # A wrong token is refused and said so.
        browser.find_element(By.ID, "token").send_keys("00" * 32 + "\n")
        until("the refused-token error", lambda: "refused that token" in error_text(browser))
        # The right one: the agent appears, the error and the form go away.
        browser.find_element(By.ID, "token").send_keys(TOKEN_HEX + "\n")
        until("the agent with the token", lambda: rows(browser) == [(str(agent.pid), "ok")])
        assert error_text(browser) == ""
        assert not browser.find_element(By.ID, "token-form").is_displayed()
        no_csp_or_script_errors(browser)

        # A fresh tab: the token from the URL fragment (never sent to the
        # server), then dropped from the address bar.
        browser.switch_to.new_window("tab")
        load(browser, base + "#token=" + TOKEN_HEX)
        until("the agent via #token", lambda: rows(browser) == [(str(agent.pid), "ok")])
        assert "token" not in browser.current_url
        assert error_text(browser) == ""
    finally:
        agent.kill()
        assert watch.stop() == 0, watch.stderr
