"""Who may read the web dashboard: a token, a ``Host`` allow-list and a cap on live streams.

The dashboard shows every job of the events topic (ids, users, labels, losses), so it is not
left open even on loopback: any page in the user's browser can send requests to 127.0.0.1,
and a DNS-rebinding page (``evil.example`` resolving to 127.0.0.1) can read the answers.

* ``Host``: a request whose ``Host`` is not an allowed name is refused (403) before anything
  else; a rebinding page sends its own name, so it gets nothing.
* Token: every route needs it (401 without). It comes from ``MODEL_TRAINER_DASHBOARD_TOKEN``
  or is generated at start and printed in the link. The link's ``?token=`` is traded once for
  an ``HttpOnly``, ``SameSite=Strict`` cookie and a redirect that drops it from the address
  bar; scripts may send ``Authorization: Bearer <token>`` instead.
* Streams: each ``/events`` stream holds a snapshot's worth of memory and a task, so at most
  ``max_streams`` run at once (503 beyond).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Middleware
from pydantic import SecretStr

ENV_TOKEN = "MODEL_TRAINER_DASHBOARD_TOKEN"
ENV_ALLOWED_HOSTS = "MODEL_TRAINER_DASHBOARD_ALLOWED_HOSTS"
ENV_MAX_STREAMS = "MODEL_TRAINER_DASHBOARD_MAX_STREAMS"
DEFAULT_MAX_STREAMS = 8
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
STREAM_PATH = "/events"
COOKIE_PREFIX = "model-trainer-dashboard-"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the dashboard on this machine."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class DashboardGuard:
    """The dashboard's access rules; ``streams`` counts the open event streams."""

    token: SecretStr
    allowed_hosts: tuple[str, ...] = LOOPBACK_NAMES
    max_streams: int = DEFAULT_MAX_STREAMS
    generated: bool = False
    streams: int = field(default=0, init=False)

    @classmethod
    def from_env(cls, bind_host: str, env: Mapping[str, str] | None = None) -> DashboardGuard:
        """The token, extra allowed host names (comma-separated) and the stream cap from
        ``env`` (default: the process environment). The bound address is allowed too, and
        the machine's own names when bound to every interface."""
        env = os.environ if env is None else env
        given = env.get(ENV_TOKEN, "").strip()
        hosts = list(LOOPBACK_NAMES)
        if not is_loopback(bind_host):
            wildcard = bind_host in ("0.0.0.0", "::", "")
            hosts += [socket.gethostname(), socket.getfqdn()] if wildcard else [bind_host]
        hosts += [h.strip() for h in env.get(ENV_ALLOWED_HOSTS, "").split(",") if h.strip()]
        streams = env.get(ENV_MAX_STREAMS, "").strip()
        return cls(
            token=SecretStr(given or secrets.token_urlsafe(24)),
            allowed_hosts=tuple(dict.fromkeys(h.strip("[]").lower() for h in hosts)),
            max_streams=int(streams) if streams else DEFAULT_MAX_STREAMS,
            generated=not given,
        )

    def _matches(self, candidate: str | None) -> bool:
        if not candidate:
            return False
        return hmac.compare_digest(candidate.encode(), self.token.get_secret_value().encode())

    def middleware(self) -> Middleware:
        """The aiohttp middleware that applies this guard to every request."""

        @web.middleware
        async def guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await self._check(request, handler)

        return guarded

    async def _check(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        host = (request.url.host or "").strip("[]").lower()
        if host not in self.allowed_hosts:
            raise web.HTTPForbidden(
                text=f"Host {host!r} is not allowed; add it to {ENV_ALLOWED_HOSTS}\n"
            )
        cookie = f"{COOKIE_PREFIX}{request.url.port}"
        if self._matches(request.query.get("token")):
            # Trade the link's token for a cookie, and take it out of the address bar.
            kept = [(key, value) for key, value in request.query.items() if key != "token"]
            found = web.HTTPFound(request.rel_url.with_query(kept))
            found.set_cookie(
                cookie, self.token.get_secret_value(), httponly=True, samesite="Strict"
            )
            raise found
        bearer = request.headers.get("Authorization", "")
        given = bearer[len("Bearer ") :] if bearer.startswith("Bearer ") else None
        if not (self._matches(request.cookies.get(cookie)) or self._matches(given)):
            raise web.HTTPUnauthorized(
                text="a token is needed: open the link the dashboard printed at start\n",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if request.path != STREAM_PATH:
            return await handler(request)
        if self.streams >= self.max_streams:
            raise web.HTTPServiceUnavailable(
                text=f"{self.max_streams} event streams are open already ({ENV_MAX_STREAMS})\n",
                headers={"Retry-After": "5"},
            )
        self.streams += 1
        try:
            return await handler(request)
        finally:
            self.streams -= 1
