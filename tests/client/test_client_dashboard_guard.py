"""The guarded dashboard in a real browser (Debian's chromium, as test_client_dashboard.py):
without the token the page shows no job and ``/api/jobs`` answers 401; a page reached under
another name (DNS rebinding: chromium resolves ``rebind.example`` to 127.0.0.1) gets 403 even
with the token; the printed link shows the jobs."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from model_trainer_client.dashboard import Dashboard
from model_trainer_client.settings import ClientSettings
from selenium import webdriver

from .stream import Job, Publisher, Topics
from .test_client_dashboard import chromium, status_is, until

pytestmark = pytest.mark.kafka

REBIND = "rebind.example"
JOBS = "return document.querySelectorAll('tr[data-job]').length"


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with chromium(f"--host-resolver-rules=MAP {REBIND} 127.0.0.1") as driver:
        yield driver


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


def _body(driver: webdriver.Chrome) -> str:
    text: str = driver.execute_script("return document.body.innerText")
    return text


async def test_the_dashboard_shows_nothing_without_the_token_and_nothing_to_another_host(
    kafka_bootstrap: str, browser: webdriver.Chrome
) -> None:
    topics = Topics(kafka_bootstrap)
    await topics.create(partitions=1)
    job = Job("guarded-1", t0=datetime.now(UTC) - timedelta(minutes=1))
    async with Publisher(topics.bootstrap) as pub:
        await pub.send_all(topics.events, job.run(steps=6, every=3))
    settings = ClientSettings.from_env(env=topics.env())
    async with Dashboard(settings, port=0) as dashboard:
        token = dashboard.guard.token.get_secret_value()
        port = dashboard.url.rsplit(":", 1)[1].strip("/")

        await asyncio.to_thread(browser.get, dashboard.url)
        assert "token is needed" in _body(browser)
        assert browser.execute_script(JOBS) == 0
        assert await asyncio.to_thread(_status, f"{dashboard.url}api/jobs") == 401
        assert await asyncio.to_thread(_status, f"{dashboard.url}events") == 401

        rebound = f"http://{REBIND}:{port}/"
        await asyncio.to_thread(browser.get, f"{rebound}?token={token}")
        assert "not allowed" in _body(browser)
        assert browser.execute_script(JOBS) == 0
        bearer = {"Authorization": f"Bearer {token}", "Host": f"{REBIND}:{port}"}
        assert await asyncio.to_thread(_status, f"{dashboard.url}api/jobs", bearer) == 403

        await asyncio.to_thread(browser.get, dashboard.link(f"#job={job.job_id}"))
        await until(browser, status_is(job.job_id, "completed"))
        assert "token" not in browser.current_url  # traded for a cookie, out of the history
        assert browser.current_url.endswith(f"/#job={job.job_id}")
        assert browser.execute_script(JOBS) == 1
        assert (
            await asyncio.to_thread(
                _status, f"{dashboard.url}api/jobs", {"Authorization": f"Bearer {token}"}
            )
            == 200
        )
