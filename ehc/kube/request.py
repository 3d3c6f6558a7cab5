"""The one way ehc talks HTTP to the API server: ``request()``, ``stream()``, ``ApiError``, ``Backoff``.

Every call goes through the kubernetes_asyncio ``ApiClient`` (``call_api`` with ``_preload_content=False``),
so the server URL, TLS and credentials (including refreshed tokens) come from its configuration, while
no generated model object is ever built: callers get raw bytes and decode them into the lean structs of
``ehc.kube.model`` (or plain JSON).

Any answer other than 2xx, and any failure to get one (refused, reset, timed out, DNS), raises one
``ApiError``; ``retryable`` says whether trying again can help.  How often and when to try again is the
caller's policy; ``Backoff`` is the one schedule for it.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import msgspec
from kubernetes_asyncio.client import ApiClient

from ehc.kube.model import status_decoder

MAX_RETRY_AFTER = 60.0  # honour the server's Retry-After, but never stall for longer than this
MAX_ERROR_BODY = 64 * 1024  # of an error answer, only a Status (or the start of something else) matters
EXCERPT = 120  # bytes of an unexpected body quoted in a message

# What "no answer" looks like: aiohttp's own errors, socket errors, and timeouts.
NO_ANSWER = (aiohttp.ClientError, OSError, TimeoutError)

Timeout = float | aiohttp.ClientTimeout


def excerpt(data: bytes, size: int = EXCERPT) -> str:
    """The start of ``data``, quoted on one line, with its full size when cut."""
    text = repr(bytes(data[:size]))
    return text + (f" … ({len(data)} bytes)" if len(data) > size else "")


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds, capped at ``MAX_RETRY_AFTER``; None when absent or not a number of
    seconds (the API server never sends the HTTP-date form)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER)


class ApiError(Exception):
    """A request that got no 2xx answer.

    ``status`` is the HTTP status, or 0 when there was no (complete) answer: connection refused or
    reset, timeout, DNS failure.  ``reason`` is the ``Status`` body's reason (e.g. ``NotFound``,
    ``Conflict``), else the HTTP reason phrase, or for status 0 the exception's class name.
    ``retry_after`` is the server's Retry-After in seconds, when it sent one.
    """

    def __init__(self, status: int, reason: str, message: str = "", retry_after: float | None = None) -> None:
        self.status = status
        self.reason = reason
        self.message = " ".join(message.split())  # one line, whatever the server sent
        self.retry_after = retry_after
        super().__init__(status, reason, self.message)

    @property
    def retryable(self) -> bool:
        """No answer, a timeout, throttling or a server-side error: the same request may succeed later."""
        return self.status in (0, 408, 429) or 500 <= self.status < 600

    def __str__(self) -> str:
        head = f"HTTP {self.status} {self.reason}".rstrip() if self.status else f"no answer: {self.reason}"
        return f"{head}: {self.message}" if self.message else head

    @classmethod
    def no_answer(cls, exc: BaseException) -> ApiError:
        return cls(0, type(exc).__name__, str(exc))

    @classmethod
    def from_answer(cls, resp: aiohttp.ClientResponse, body: bytes) -> ApiError:
        """From a non-2xx answer: the Kubernetes ``Status`` in its body, else an excerpt of the body."""
        reason, message = resp.reason or "", excerpt(body) if body else ""
        with contextlib.suppress(msgspec.DecodeError):
            status = status_decoder.decode(body)
            if status.reason or status.message:
                reason, message = status.reason or reason, status.message
        return cls(resp.status, reason, message, parse_retry_after(resp.headers.get("Retry-After")))


def api_path(
    group: str,
    version: str,
    plural: str,
    *,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """The REST path of a collection or object, e.g. ``/api/v1/namespaces/default/pods/web-1/status``
    (the core group lives under ``/api``, every other group under ``/apis/<group>``)."""
    parts = ["/api" if not group else f"/apis/{group}", version]
    if namespace:
        parts += ["namespaces", quote(namespace, safe="")]
    parts.append(plural)
    if name:
        parts.append(quote(name, safe=""))
        if subresource:
            parts.append(subresource)
    return "/".join(parts)


async def _send(
    api: ApiClient,
    method: str,
    path: str,
    query: Mapping[str, str] | None,
    body: Any,
    content_type: str | None,
    timeout: Timeout,
) -> aiohttp.ClientResponse:
    """Send one request; return the open 2xx response, or raise ``ApiError``."""
    headers = {"Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    try:
        resp: aiohttp.ClientResponse = await api.call_api(
            path,
            method,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=timeout,
        )
    except NO_ANSWER as exc:
        raise ApiError.no_answer(exc) from exc
    if 200 <= resp.status < 300:
        return resp
    try:
        data = await resp.content.read(MAX_ERROR_BODY)
    except NO_ANSWER:
        data = b""  # the status line is the answer; a body cut short adds nothing
    finally:
        resp.close()
    raise ApiError.from_answer(resp, data)


async def request(
    api: ApiClient,
    method: str,
    path: str,
    *,
    query: Mapping[str, str] | None = None,
    body: Any = None,
    content_type: str | None = None,
    timeout: Timeout = 10.0,
) -> bytes:
    """One request; the 2xx answer's body.  ``body`` is JSON-serialized (a dict, usually); ``timeout``
    in seconds bounds the whole exchange.  Raises ``ApiError``."""
    async with _answer(api, method, path, query, body, content_type, timeout) as resp:
        return await resp.read()


@contextlib.asynccontextmanager
async def stream(
    api: ApiClient, path: str, *, query: Mapping[str, str] | None = None, timeout: Timeout
) -> AsyncIterator[aiohttp.StreamReader]:
    """A GET whose body is read as it arrives (a watch).  Yields the body; a transport failure while it
    is read raises ``ApiError`` (status 0) too.  Leaving early, by error or cancellation, drops the
    connection, so the server sees the watch go away at once."""
    async with _answer(api, "GET", path, query, None, None, timeout) as resp:
        yield resp.content


@contextlib.asynccontextmanager
async def _answer(
    api: ApiClient,
    method: str,
    path: str,
    query: Mapping[str, str] | None,
    body: Any,
    content_type: str | None,
    timeout: Timeout,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """The open 2xx response while its body is read: a transport failure meanwhile is an ``ApiError``
    (status 0); any failure or cancellation drops the connection, a clean end releases it."""
    resp = await _send(api, method, path, query, body, content_type, timeout)
    try:
        yield resp
    except NO_ANSWER as exc:
        resp.close()
        raise ApiError.no_answer(exc) from exc
    except BaseException:
        resp.close()
        raise
    resp.release()


class Backoff:
    """Exponential backoff with full jitter: the n-th delay (from 0) is uniform in
    ``[0, min(cap, base * 2**n)]``, and never shorter than the server's Retry-After when it sent one.

    Full jitter spreads clients that failed together (an API server restart) over the whole window
    instead of sending them back in lockstep.  ``next()``/``reset()`` keep the attempt count for a
    single retry loop; ``delay(attempt)`` serves callers that count attempts themselves.
    """

    def __init__(self, base: float, cap: float, *, rand: Callable[[], float] = random.random) -> None:
        if not 0 < base <= cap:
            raise ValueError(f"backoff needs 0 < base <= cap, got {base} / {cap}")
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rand = rand

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        ceiling = min(self.cap, self.base * 2.0 ** min(attempt, 64))
        delay = self._rand() * ceiling
        return delay if retry_after is None else max(delay, retry_after)

    def next(self, retry_after: float | None = None) -> float:
        """The delay before the next attempt; each call without a ``reset()`` widens the window."""
        delay = self.delay(self.attempt, retry_after)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Progress was made: the next failure starts again from the smallest window."""
        self.attempt = 0
