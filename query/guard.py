"""What stands between the network and the query API: key, rate, concurrency, body size.

``RequestGuard`` is a plain ASGI middleware, so it decides on the request line and headers
alone, before FastAPI reads or parses a byte of the body: a wrong key costs the server a
header comparison, not a 50 MB JSON parse. In order:

1. the API key (``X-API-Key`` or ``Authorization: Bearer``) on every path but the public
   ones (health probe, OpenAPI pages): 401. The key names the caller: ``api.api_key``'s
   holder has ``api.api_key_principals``, a key of ``api.keys`` (stored by its SHA-256,
   never in clear) its own principals; they travel to the app in the ASGI scope
   (``CALLER_SCOPE_KEY``). A server without keys has anonymous callers (public only);
2. a token bucket and an in-flight count per client (the API key when one is sent, else the
   client address), held for at most ``api.max_tracked_clients`` clients: 429 with
   ``Retry-After``;
3. the body, read here up to ``api.max_body_bytes`` (a declared ``Content-Length`` above it
   is refused unread, a streamed body is counted as it arrives): 413; the app then reads
   the buffered copy.

``scrub`` removes server paths and URLs from text sent to clients; ``check_bind`` is the rule
``serve`` applies before it listens.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import ipaddress
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from freshindex.errors import ConfigError
from freshindex.query.config import ApiConfig

CALLER_SCOPE_KEY = "freshindex.principals"  # the caller's principals; None: anonymous
PUBLIC_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
UNLIMITED_PATHS = frozenset({"/health"})  # probes are never rate limited


# ---------------------------------------------------------------- what clients may see

_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]*")
_POSIX_PATH = re.compile(r"(?<![\w.~/-])(?:~|\.{1,2})?/[^\s'\"<>,;()\[\]{}]+")
_WINDOWS_PATH = re.compile(r"\b[A-Za-z]:\\[^\s'\"<>,;()\[\]{}]*")


def scrub(text: str | None) -> str | None:
    """``text`` with URLs and absolute paths replaced by ``<url>`` and ``<path>``.

    Error messages and hints are written for the operator; clients get them scrubbed,
    the server log keeps the original.

    >>> scrub("cannot reach http://10.0.0.5:8000/v1 (see /srv/data/x.log)")
    'cannot reach <url> (see <path>)'
    """
    if text is None:
        return None
    text = _URL.sub("<url>", text)
    text = _WINDOWS_PATH.sub("<path>", text)
    return _POSIX_PATH.sub("<path>", text)


def check_bind(
    host: str, *, api_key_env: str | None, insecure_no_auth: bool, keys: bool = False
) -> None:
    """Refuse to listen beyond this machine without an API key (``ConfigError``); ``keys``:
    api.keys holds hashed keys."""
    if api_key_env or keys or insecure_no_auth or is_loopback(host):
        return
    raise ConfigError(
        f"refusing to serve on {host} without an API key: anyone who can reach it could query "
        "the index",
        hint="set api.api_key: ${NAME}, NAME the environment variable holding a key, bind to "
        "127.0.0.1, or pass --insecure-no-auth to serve without one on purpose",
    )


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname other than localhost may resolve anywhere


# ---------------------------------------------------------------- per-client limits


@dataclass
class _Client:
    tokens: float
    updated: float
    in_flight: int = 0


class ClientLimiter:
    """Token bucket (``per_minute``, ``burst``) and in-flight cap per client id, for at most
    ``max_clients`` clients (least recently seen dropped first, idle ones before busy ones).

    Used from the event loop only, so it needs no lock. ``acquire`` returns None when the
    request may go on (``release`` it afterwards) or the seconds to wait.
    """

    def __init__(
        self,
        *,
        per_minute: float,
        burst: int,
        max_concurrent: int,
        max_clients: int,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_concurrent = max_concurrent
        self.max_clients = max_clients
        self.clock = clock
        self.clients: collections.OrderedDict[str, _Client] = collections.OrderedDict()

    def acquire(self, client_id: str) -> float | None:
        now = self.clock()
        state = self.clients.get(client_id)
        if state is None:
            state = self.clients[client_id] = _Client(tokens=self.burst, updated=now)
            self._evict()
        else:
            self.clients.move_to_end(client_id)
        if self.rate > 0:
            state.tokens = min(self.burst, state.tokens + (now - state.updated) * self.rate)
            state.updated = now
            if state.tokens < 1.0:
                return (1.0 - state.tokens) / self.rate
        if self.max_concurrent and state.in_flight >= self.max_concurrent:
            return 1.0
        if self.rate > 0:
            state.tokens -= 1.0
        state.in_flight += 1
        return None

    def release(self, client_id: str) -> None:
        state = self.clients.get(client_id)
        if state is not None and state.in_flight > 0:
            state.in_flight -= 1

    def _evict(self) -> None:
        while len(self.clients) > self.max_clients:
            idle = next((c for c, s in self.clients.items() if s.in_flight == 0), None)
            # all busy: drop the oldest anyway (its release finds nothing); memory stays bounded
            self.clients.pop(idle if idle is not None else next(iter(self.clients)))


# ---------------------------------------------------------------- the middleware


class RequestGuard:
    """ASGI middleware: see the module docstring."""

    def __init__(
        self,
        app,
        *,
        limits: ApiConfig,
        api_key: str | None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.key_principals = tuple(limits.api_key_principals)
        # sha256 hex digest -> principals; a presented key is hashed and looked up, so the
        # server never holds the keys of api.keys in clear
        self.keys = {
            digest.removeprefix("sha256:"): tuple(principals)
            for digest, principals in limits.keys.items()
        }
        self.max_body = limits.max_body_bytes
        self.limiter = ClientLimiter(
            per_minute=limits.rate_limit_per_minute,
            burst=limits.rate_limit_burst,
            max_concurrent=limits.max_concurrent_per_client,
            max_clients=limits.max_tracked_clients,
            clock=clock,
        )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers") or ()}
        path = scope.get("path", "")
        given = _presented_key(headers)
        has_keys = self.api_key is not None or bool(self.keys)
        needs_key = path not in PUBLIC_PATHS and has_keys
        principals = self._principals(given) if has_keys else None
        if needs_key and principals is None:
            await _reply(
                send,
                401,
                "missing or wrong API key",
                "send it in the X-API-Key header",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        scope[CALLER_SCOPE_KEY] = principals
        client_id = _client_id(scope, given if has_keys else None)
        limited = path not in UNLIMITED_PATHS
        if limited:
            wait = self.limiter.acquire(client_id)
            if wait is not None:
                retry = str(max(1, math.ceil(wait))).encode()
                await _reply(
                    send,
                    429,
                    "too many requests from this client",
                    f"retry after {retry.decode()} s",
                    [(b"retry-after", retry)],
                )
                return
        try:
            declared = headers.get("content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
                await self._too_large(send)
                return
            body = await self._read_body(receive)
            if body is None:
                await self._too_large(send)
                return
            await self.app(scope, _replay(body, receive), send)
        finally:
            if limited:
                self.limiter.release(client_id)

    def _principals(self, given: bytes | None) -> tuple[str, ...] | None:
        """The principals of a presented key; None: no key, or an unknown one."""
        if not given:
            return None
        found = self.keys.get(hashlib.sha256(given).hexdigest())
        if found is not None:
            return found
        if self.api_key is not None and hmac.compare_digest(given, self.api_key):
            return self.key_principals
        return None

    async def _read_body(self, receive) -> bytes | None:
        """The whole body, or None past the limit (counted per chunk, whatever the headers say)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _too_large(self, send) -> None:
        await _reply(
            send,
            413,
            f"the request body is larger than {self.max_body} bytes",
            "send a shorter query or fewer filters",
            [(b"connection", b"close")],
        )


def _presented_key(headers: dict[str, bytes]) -> bytes | None:
    given = headers.get("x-api-key")
    if given:
        return given
    auth = headers.get("authorization") or b""
    if auth[:7].lower() == b"bearer ":
        return auth[7:].strip()
    return None


def _client_id(scope, key: bytes | None) -> str:
    """Per API key when the server has keys (a key's holder may use many addresses), else per
    address. The key is hashed: the limiter's table never holds a secret."""
    if key:
        return "key:" + hashlib.sha256(key).hexdigest()[:32]
    client = scope.get("client")
    return "addr:" + (client[0] if client else "unknown")


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: the disconnect, when it comes

    return replay


async def _reply(send, status: int, detail: str, hint: str, headers: list) -> None:
    blob = json.dumps({"detail": detail, "hint": hint}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(blob)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": blob})
