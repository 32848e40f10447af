"""The web dashboard in a real browser (Debian's chromium + chromium-driver, via selenium):
a job's events published step by step onto the real broker show up live on the page."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from model_trainer_client.dashboard import Dashboard
from model_trainer_client.settings import ClientSettings
from model_trainer_contracts import LogLineV1, ModelTrainerErrorCode, encode
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

from .stream import Job, Publisher, Topics

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")


@contextlib.contextmanager
def chromium(*args: str) -> Iterator[webdriver.Chrome]:
    """Headless chromium through chromium-driver, with these arguments too (the test is
    skipped where they are not installed)."""
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    options = Options()
    options.binary_location = CHROMIUM
    headless = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage")
    for arg in (*headless, *args):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with chromium("--window-size=1400,700") as driver:
        yield driver


STATUS = """
const cell = document.querySelector(`tr[data-job='${arguments[0]}'] td.status`);
return cell ? cell.textContent : null;
"""
POINTS = """
const line = document.querySelector('#chart-loss polyline.train_loss');
return line ? Number(line.getAttribute('data-points')) : 0;
"""


def _get(url: str, token: str) -> bytes:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        body: bytes = response.read()
        return body


async def until(driver: webdriver.Chrome, what: Callable[[webdriver.Chrome], object]) -> object:
    """Wait (in a thread, so the dashboard keeps serving) until ``what`` is truthy."""
    wait = WebDriverWait(driver, 30, poll_frequency=0.1)
    return await asyncio.to_thread(wait.until, what)


def status_is(job_id: str, status: str) -> Callable[[webdriver.Chrome], bool]:
    return lambda d: d.execute_script(STATUS, job_id) == status


def points_over(count: int) -> Callable[[webdriver.Chrome], int | bool]:
    def check(d: webdriver.Chrome) -> int | bool:
        found = int(d.execute_script(POINTS))
        return found if found > count else False

    return check


def connection_is(text: str) -> Callable[[webdriver.Chrome], bool]:
    return lambda d: bool(d.find_element("id", "connection").text == text)


def logs_hold(text: str) -> Callable[[webdriver.Chrome], str | bool]:
    def check(d: webdriver.Chrome) -> str | bool:
        shown = str(d.find_element("id", "detail-logs").text)
        return shown if text in shown else False

    return check


async def test_dashboard_shows_a_job_queued_then_running_with_a_growing_curve_then_completed(
    kafka_bootstrap: str, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    topics = Topics(kafka_bootstrap)
    await topics.create(partitions=2)
    now = datetime.now(UTC) - timedelta(minutes=5)
    earlier = Job("nightly-base", user_id=3, labels={"team": "nlp"}, t0=now)
    broken = Job("typo-corpus", user_id=5, labels={"team": "vision"}, t0=now)
    job = Job(
        "shakespeare-42",
        labels={"team": "nlp", "run": "demo"},
        t0=now + timedelta(minutes=1),
        loss_at=lambda step: 1.45 + 2.75 * math.exp(-step / 14) + 0.04 * math.sin(step),
        lr_at=lambda step, total: 6e-4 * min(1.0, step / 10) * (0.55 + 0.45 * math.cos(step / 30)),
    )
    earlier.loss_at = lambda step: 1.6 + 2.6 * math.exp(-step / 10)
    async with Publisher(topics.bootstrap) as pub:
        await pub.send_all(topics.events, earlier.run(steps=40, every=4))
        await pub.send_all(
            topics.events,
            [broken.queued(), broken.failed(ModelTrainerErrorCode.CORPUS_NOT_FOUND)],
        )
        settings = ClientSettings.from_env(env=topics.env())  # no state topic: events alone
        async with Dashboard(settings, port=0) as dashboard:
            await asyncio.to_thread(browser.get, dashboard.link(f"#job={job.job_id}"))
            await until(browser, status_is("nightly-base", "completed"))

            job.total_steps = 60
            await pub.send(topics.events, job.queued(position=1))
            await until(browser, status_is(job.job_id, "queued"))

            await pub.send_all(topics.events, [job.config(), job.progress(3), job.progress(6)])
            await until(browser, status_is(job.job_id, "running"))
            first = await until(browser, points_over(1))
            assert isinstance(first, int)

            await pub.send_all(topics.events, [job.progress(s, val=s % 12 == 0) for s in (9, 12)])
            grown = await until(browser, points_over(first))
            assert isinstance(grown, int)

            steps = range(15, 61, 3)
            await pub.send_all(
                topics.events, [job.progress(s, val=s % 12 == 0) for s in steps if s <= 36]
            )
            await until(browser, points_over(grown + 7))
            running = tmp_path / "dashboard-running.png"  # the README's picture: mid-run
            assert await asyncio.to_thread(browser.save_screenshot, str(running))
            await pub.send_all(
                topics.events, [job.progress(s, val=s % 12 == 0) for s in steps if s > 36]
            )
            await pub.send(topics.events, job.completed())
            await until(browser, status_is(job.job_id, "completed"))
            assert await until(browser, points_over(grown)) == 2 + 2 + len(steps)

            row = browser.execute_script(
                "return document.querySelector(`tr[data-job='shakespeare-42']`).innerText"
            )
            assert "team=nlp" in row
            assert "60/60" in row
            counts = browser.find_element("id", "counts").text
            assert "completed 2" in counts
            assert "failed 1" in counts
            val_dots = browser.execute_script(
                "return document.querySelectorAll('#chart-loss circle.val_loss').length"
            )
            assert val_dots == 5
            token = dashboard.guard.token.get_secret_value()
            api = await asyncio.to_thread(_get, f"{dashboard.url}api/jobs", token)
            assert b"shakespeare-42" in api

            # a refused cancel of a mistyped id, and a job cancelled while it ran
            typo = Job("nope-job", user_id=0, labels={}, t0=now + timedelta(minutes=2))
            stopped = Job("stopped-1", t0=now + timedelta(minutes=3))
            await pub.send(
                topics.events, typo.failed(ModelTrainerErrorCode.JOB_NOT_FOUND, rejected=True)
            )
            await pub.send_all(
                topics.events,
                [
                    stopped.queued(),
                    stopped.config(),
                    stopped.progress(2),
                    stopped.failed(ModelTrainerErrorCode.TRAINING_CANCELLED),
                ],
            )
            await until(browser, status_is("nope-job", "rejected"))
            await until(browser, status_is("stopped-1", "cancelled"))
            counts = browser.find_element("id", "counts").text
            assert "rejected 1" in counts
            assert "cancelled 1" in counts
            badge = browser.execute_script(
                "const b = document.querySelector(`tr[data-job='nope-job'] .badge`);"
                "return getComputedStyle(b).backgroundColor"
            )
            assert badge not in ("rgba(0, 0, 0, 0)", "transparent")  # a visible badge
            browser.execute_script("document.querySelector(`tr[data-job='nope-job']`).click()")
            info = browser.find_element("id", "detail-info").text
            assert "JOB_NOT_FOUND: job_not_found happened" in info

            # the selected job's own log lines, its traceback among them
            crash = "Traceback (most recent call last):\n  File x\nValueError: boom"
            for number, message, exception in [(0, "job started", None), (1, "crashed", crash)]:
                line = LogLineV1(
                    job_id="stopped-1", line=number, level="info", message=message,
                    exception=exception,
                )  # fmt: skip
                await pub.send(topics.logs, ("stopped-1", encode(line)))
            browser.execute_script("document.querySelector(`tr[data-job='stopped-1']`).click()")
            shown = await until(browser, logs_hold("ValueError: boom"))
            assert isinstance(shown, str)
            assert [n for n, x in enumerate(shown.splitlines()) if "job started" in x] == [0]

            # Kafka away, then back (the outage watch tells the feed): the page says its data
            # is stale, then live again
            dashboard.feed.kafka(False)
            assert await until(browser, connection_is("stale: Kafka unreachable"))
            dashboard.feed.kafka(True)
            assert await until(browser, connection_is("live"))

            shot = tmp_path / "dashboard.png"
            assert await asyncio.to_thread(browser.save_screenshot, str(shot))
            assert shot.stat().st_size > 10_000
            if os.environ.get("MODEL_TRAINER_UPDATE_SCREENSHOT"):
                shutil.copyfile(running, ROOT / "docs" / "dashboard.png")
