"""The dashboard's guard over HTTP, in process (no broker: the feed is not started): the
``Host`` allow-list, the token (link, cookie, bearer) and the cap on event streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from model_trainer_client.dashboard import Feed, make_app
from model_trainer_client.guard import ENV_ALLOWED_HOSTS, DashboardGuard, is_loopback
from model_trainer_client.settings import ClientSettings
from pydantic import SecretStr

TOKEN = "s3cret-token"


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    guard = DashboardGuard(SecretStr(TOKEN), max_streams=2)
    server = TestServer(make_app(Feed(ClientSettings()), guard), host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


async def _status(
    server: TestServer, path: str, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(server.make_url(path), headers=headers, allow_redirects=False) as response,
    ):
        return response.status, await response.text()


async def test_every_route_needs_the_token(server: TestServer) -> None:
    paths = ["/", "/api/jobs", "/events", "/static/dashboard.js"]
    found = [(await _status(server, path))[0] for path in paths]
    assert found == [401, 401, 401, 401]
    wrong = {"Authorization": "Bearer not-it"}
    assert [(await _status(server, p, wrong))[0] for p in paths] == [401, 401, 401, 401]
    assert (await _status(server, "/api/jobs?token=not-it"))[0] == 401
    status, body = await _status(server, "/api/jobs", {"Authorization": f"Bearer {TOKEN}"})
    assert (status, body) == (200, '{"jobs": [], "series": {}}')


async def test_a_foreign_host_is_refused_even_with_the_token(server: TestServer) -> None:
    rebinding = {"Host": f"evil.example:{server.port}", "Authorization": f"Bearer {TOKEN}"}
    status, body = await _status(server, "/api/jobs", rebinding)
    assert status == 403
    assert ENV_ALLOWED_HOSTS in body
    local = {"Host": f"localhost:{server.port}", "Authorization": f"Bearer {TOKEN}"}
    assert (await _status(server, "/api/jobs", local))[0] == 200


async def test_the_link_token_becomes_a_strict_cookie_and_leaves_the_address(
    server: TestServer,
) -> None:
    # unsafe: aiohttp's jar keeps no cookie of an IP address unless told to; browsers do.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        url = server.make_url(f"/?token={TOKEN}&x=1")
        async with session.get(url, allow_redirects=False) as response:
            assert response.status == 302
            assert response.headers["Location"] == "/?x=1"
            cookie = response.headers["Set-Cookie"]
            assert "HttpOnly" in cookie
            assert "SameSite=Strict" in cookie
        async with session.get(server.make_url("/api/jobs")) as response:
            assert response.status == 200  # the session sends the cookie back


async def test_event_streams_are_capped(server: TestServer) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=bearer) as session:
        first = await session.get(server.make_url("/events"))
        second = await session.get(server.make_url("/events"))
        assert [first.status, second.status] == [200, 200]
        async with session.get(server.make_url("/events")) as third:
            assert (third.status, third.headers["Retry-After"]) == (503, "5")
        first.close()
        for _ in range(100):  # the server notices the closed stream at its next write
            async with session.get(server.make_url("/api/jobs")) as probe:
                assert probe.status == 200
            fourth = await session.get(server.make_url("/events"))
            if fourth.status == 200:
                break
            fourth.close()
            await asyncio.sleep(0.05)
        assert fourth.status == 200
        fourth.close()
        second.close()


def test_the_guard_from_the_environment() -> None:
    local = DashboardGuard.from_env("127.0.0.1", env={})
    assert local.generated
    assert len(local.token.get_secret_value()) >= 32
    assert local.allowed_hosts == ("127.0.0.1", "localhost", "::1")
    assert DashboardGuard.from_env("127.0.0.1", env={}).token != local.token
    chosen = DashboardGuard.from_env(
        "10.0.0.5",
        env={
            "MODEL_TRAINER_DASHBOARD_TOKEN": "mine",
            ENV_ALLOWED_HOSTS: "Board.Example, other",
            "MODEL_TRAINER_DASHBOARD_MAX_STREAMS": "3",
        },
    )
    assert (chosen.token.get_secret_value(), chosen.generated) == ("mine", False)
    assert chosen.allowed_hosts[3:] == ("10.0.0.5", "board.example", "other")
    assert chosen.max_streams == 3
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "10.0.0.5")] == [
        True,
        True,
        True,
        False,
        False,
    ]
