"""The review page end to end, in a real headless browser: Debian's chromium driven by Selenium through Debian's
chromium-driver (`.ci/run` installs both; nothing is downloaded).

A worker and `stream-app console` run on the session's broker with a bearer token. The page is opened before
any traffic, so the alerts it shows were pushed; an analyst claims one, a second analyst is refused the claim,
the first confirms fraud, and the worker's label join learns the analyst label (`stream_app_labels_total
{outcome="joined"}` grows). A hostile alert (markup as merchant id) is rendered as text. A chargeback after an
analyst's legit is a correction, learned again.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from outputs import PARTITIONS, produce, read_until, scrape
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from stream_app.devtools.broker import free_port
from stream_app.devtools.children import die_with_parent
from stream_app.devtools.generator import GeneratorConfig, simulate
from stream_app.devtools.worker_process import WorkerProcess
from stream_app.settings import Settings

TOKEN = "review-test-token"
HOSTILE = '<img src=x onerror="window.__xss=1">'
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float = 180) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"never: {what}")


def call(port: int, path: str, body: dict[str, Any] | None = None, token: str | None = TOKEN) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST" if body is not None else "GET",
                                     data=None if body is None else orjson.dumps(body))
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path="/usr/bin/chromedriver"))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def console(kafka_bootstrap: str, app_env: dict[str, str], tmp_path: Path) -> Iterator[int]:
    port = free_port()
    env = dict(os.environ, **app_env, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, STREAM_APP_HTTP_TOKEN=TOKEN)
    with (tmp_path / "console.log").open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "stream_app.cli", "console", "--port", str(port),
                                    "--claim-seconds", "120"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                   preexec_fn=die_with_parent)
    try:
        wait_for("the console answers /ready", lambda: _ready(port), 60)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=20)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def read_labels(s: Settings, at_least: int) -> list[dict[str, Any]]:
    return asyncio.run(read_until(s.bootstrap_servers, [s.labels_topic], PARTITIONS,
                                  lambda o: len(o.of(s.labels_topic)) >= at_least, 30)).of(s.labels_topic)


def joined(port: int) -> float:
    return scrape(port).get(("stream_app_labels_total", (("outcome", "joined"),)), 0.0)


def test_an_analyst_confirms_a_pushed_alert_and_the_worker_learns_the_label(
        kafka_bootstrap: str, app_env: dict[str, str], console: int, browser: WebDriver, tmp_path: Path) -> None:
    s = Settings.from_env({**app_env, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    worker = WorkerProcess(kafka_bootstrap, tmp_path / "worker",
                           {**app_env, "STREAM_APP_HTTP_TOKEN": TOKEN, "STREAM_APP_METRICS_PUBLIC": "true"}).start()
    try:
        worker.wait_ready()
        assert call(console, "/api/events", token=None)[0] == 401
        assert call(console, "/api/events", token="wrong")[0] == 401
        status, headers = call(console, "/review", token=None)
        assert status == 200 and "script-src 'self'" in headers["Content-Security-Policy"]

        browser.get(f"http://127.0.0.1:{console}/review")
        browser.find_element(By.ID, "analyst").send_keys("alice@bank.example")
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.ID, "connect").click()
        WebDriverWait(browser, 30).until(lambda d: "live" in d.find_element(By.ID, "status").text)
        assert not browser.find_elements(By.CSS_SELECTOR, "article.alert"), "a fresh queue is empty"

        items = list(simulate(GeneratorConfig(seed=7, n_customers=150, fraud_rate=0.05), days=1))
        frauds = {i.tx.tx_id for i in items if i.is_fraud}
        asyncio.run(produce(kafka_bootstrap, s.transactions_topic,
                            [(i.tx.card_id.encode(), i.tx.to_bytes()) for i in items]))
        hostile = {"alert_id": "tx-hostile", "tx_id": "tx-hostile", "card_id": "card_hostile", "merchant_id": HOSTILE,
                   "amount": 1.0, "currency": "EUR", "country": "<b>FR</b>", "decision": "review", "risk_score": 0.5,
                   "scores": {"onnx": 0.5, "river": 0.5}, "model_versions": {"onnx": "x", "river": "y"},
                   "reasons": [{"feature": "amount_eur", "value": 1, "push": 1, "text": "<script>bad()</script>"}],
                   "rules": {"version": "v1", "model_decision": "approve", "decided_by": "<i>r1</i>",
                             "hits": [{"id": "<i>r1</i>", "action": "review", "mode": "enforce",
                                       "reason": '<svg onload="window.__xss=2">'}]}}
        asyncio.run(produce(kafka_bootstrap, s.alerts_topic, [(b"card_hostile", orjson.dumps(hostile))]))

        def pushed_fraud() -> Any:
            cards = browser.find_elements(By.CSS_SELECTOR, "article.alert")
            ids = {c.get_attribute("data-alert-id") for c in cards}
            return "tx-hostile" in ids and next((c for c in cards if c.get_attribute("data-alert-id") in frauds), None)

        card = WebDriverWait(browser, 240, poll_frequency=0.5).until(lambda d: pushed_fraud())
        alert_id = card.get_attribute("data-alert-id")

        bad = browser.find_element(By.CSS_SELECTOR, 'article[data-alert-id="tx-hostile"]')
        assert bad.find_element(By.CSS_SELECTOR, ".merchant").text == HOSTILE, "markup shown as text"
        assert "<script>bad()</script>" in bad.text
        assert "decided by rule <i>r1</i>" in bad.text and '<svg onload="window.__xss=2">' in bad.text
        assert not browser.find_elements(By.CSS_SELECTOR, "#queue img, #queue script, #queue b, #queue i, #queue svg")
        assert browser.execute_script("return window.__xss === undefined")

        def article() -> Any:
            return browser.find_element(By.CSS_SELECTOR, f'article[data-alert-id="{alert_id}"]')

        assert article().find_element(By.CSS_SELECTOR, ".card").text.startswith("card_")
        assert article().find_elements(By.CSS_SELECTOR, "table tbody tr"), "scores, versions, recent transactions"
        before = joined(worker.web_port)
        article().find_element(By.CSS_SELECTOR, "button.claim-button").click()
        WebDriverWait(browser, 30).until(lambda d: "claimed by alice@bank.example" in article().text)
        status, body = call(console, f"/api/alerts/{alert_id}/claim", {"analyst": "bob"})
        assert status == 409 and body["error"] == "claimed", "one analyst at a time"
        assert call(console, f"/api/alerts/{alert_id}/verdict", {"analyst": "bob", "verdict": "legit"})[0] == 409

        shot = tmp_path / "review-page.png"
        browser.save_screenshot(str(shot))
        print(f"screenshot: {shot}")
        assert shot.stat().st_size > 10_000

        article().find_element(By.CSS_SELECTOR, "button.fraud").click()
        WebDriverWait(browser, 60).until(
            lambda d: not d.find_elements(By.CSS_SELECTOR, f'article[data-alert-id="{alert_id}"]'))

        wait_for("the worker joins the analyst label", lambda: joined(worker.web_port) > before)
        labels = read_labels(s, 1)
        assert [(x["tx_id"], x["label"], x["source"], x["analyst"]) for x in labels] == [
            (alert_id, "fraud", "analyst", "alice@bank.example")]
        examples = asyncio.run(read_until(kafka_bootstrap, [s.examples_topic], 1,
                                          lambda o: bool(o.of(s.examples_topic)), 30)).of(s.examples_topic)
        assert [(x["tx_id"], x["label"], x["source"], x["analyst"]) for x in examples] == [
            (alert_id, 1, "analyst", "alice@bank.example")]

        # A correction: bob clears another alert as legit, then the issuer's chargeback says fraud.
        other = next(a.get_attribute("data-alert-id") for a in browser.find_elements(By.CSS_SELECTOR, "article.alert")
                     if a.get_attribute("data-alert-id") not in {"tx-hostile", alert_id})
        assert call(console, f"/api/alerts/{other}/claim", {"analyst": "bob"})[0] == 200
        assert call(console, f"/api/alerts/{other}/verdict", {"analyst": "bob", "verdict": "legit"})[0] == 200
        card_id = next(x for x in read_labels(s, 2) if x["tx_id"] == other)["card_id"]
        chargeback = {"tx_id": other, "card_id": card_id, "label": "fraud", "source": "chargeback",
                      "label_time": "2026-02-01T00:00:00Z"}
        asyncio.run(produce(kafka_bootstrap, s.labels_topic, [(card_id.encode(), orjson.dumps(chargeback))]))
        wait_for("the chargeback corrects the analyst", lambda: scrape(worker.web_port).get(
            ("stream_app_labels_total", (("outcome", "corrected"),)), 0.0) == 1)
        examples = asyncio.run(read_until(kafka_bootstrap, [s.examples_topic], 1,
                                          lambda o: len(o.of(s.examples_topic)) >= 3, 30)).of(s.examples_topic)
        assert [(x["tx_id"], x["label"], x["source"]) for x in examples[1:]] == [
            (other, 0, "analyst"), (other, 1, "chargeback")]
        assert not browser.find_elements(By.CSS_SELECTOR, f'article[data-alert-id="{other}"]'), "closed on the page"
    finally:
        worker.stop()
