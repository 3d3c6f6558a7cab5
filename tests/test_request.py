"""``ehc.kube.request``: real HTTP through the real kubernetes_asyncio ApiClient, against a scripted aiohttp
server of our own (for answers the simulator never gives) and the simulated API server (TLS and a token);
and the one ``Backoff``."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from kubernetes_asyncio import client

from ehc.kube.client import make_api_client
from ehc.kube.request import (
    MAX_RETRY_AFTER,
    ApiError,
    Backoff,
    api_path,
    parse_retry_after,
    request,
    stream,
)
from ehc.sim.apiserver import ApiServer

TOKEN = "t0ken"


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
            "message": message}  # fmt: skip


async def echo(request: web.Request) -> web.Response:
    """What arrived: method, path, query, the headers that matter, the body."""
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "authorization": request.headers.get("Authorization"),
            "accept": request.headers.get("Accept"),
            "content_type": request.headers.get("Content-Type"),
            "body": json.loads(body) if body else None,
        }
    )


async def boom(request: web.Request) -> web.Response:
    return web.json_response(status(500, "InternalError", "boom\nand more"), status=500)


async def throttled(request: web.Request) -> web.Response:
    headers = {"Retry-After": request.query.get("after", "3")}
    body = status(429, "TooManyRequests", "too many requests, please try again later")
    return web.json_response(body, status=429, headers=headers)


async def bad_gateway(request: web.Request) -> web.Response:
    html = "<html><head><title>502 Bad Gateway</title></head><body>" + "x" * 500 + "</body></html>"
    return web.Response(status=502, text=html, content_type="text/html")


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(5)
    return web.json_response({})


async def lines(request: web.Request) -> web.StreamResponse:
    """Two lines, then the connection is dropped mid-stream unless ``?end=1``."""
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    await resp.write(b'{"n": 1}\n{"n": 2}\n')
    if request.query.get("end") == "1":
        await resp.write_eof()
        return resp
    await asyncio.sleep(0.05)
    assert request.transport is not None
    request.transport.abort()
    return resp


def write_kubeconfig(path: Path, port: int) -> str:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": TOKEN}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path.write_text(json.dumps(cfg))
    return str(path)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[client.ApiClient]:
    """An ApiClient pointed at the scripted server."""
    app = web.Application()
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    app.router.add_get("/boom", boom)
    app.router.add_get("/throttled", throttled)
    app.router.add_get("/bad-gateway", bad_gateway)
    app.router.add_get("/slow", slow)
    app.router.add_get("/lines", lines)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        ac = await make_api_client(write_kubeconfig(tmp_path / "kubeconfig", port))
        async with ac:
            yield ac
    finally:
        await runner.cleanup()


async def test_2xx_body_with_query_body_content_type_and_credentials(api: client.ApiClient) -> None:
    data = await request(
        api,
        "PATCH",
        "/echo/api/v1/namespaces/default/pods/web-1/status",
        query={"fieldManager": "ehc", "dryRun": "All"},
        body={"status": {"conditions": [{"type": "Ready", "status": "False"}]}},
        content_type="application/strategic-merge-patch+json",
    )
    got = msgspec.json.decode(data)
    assert got == {
        "method": "PATCH",
        "path": "/echo/api/v1/namespaces/default/pods/web-1/status",
        "query": {"fieldManager": "ehc", "dryRun": "All"},
        "authorization": f"Bearer {TOKEN}",  # from the ApiClient's configuration
        "accept": "application/json",
        "content_type": "application/strategic-merge-patch+json",
        "body": {"status": {"conditions": [{"type": "Ready", "status": "False"}]}},
    }
    plain = msgspec.json.decode(await request(api, "POST", "/echo/x", body={"a": 1}))
    assert plain["content_type"] == "application/json" and plain["body"] == {"a": 1}


async def test_500_with_a_status_body(api: client.ApiClient) -> None:
    with pytest.raises(ApiError) as caught:
        await request(api, "GET", "/boom")
    err = caught.value
    assert (err.status, err.reason, err.message) == (500, "InternalError", "boom and more")
    assert err.retryable and err.retry_after is None
    assert str(err) == "HTTP 500 InternalError: boom and more"


async def test_429_with_retry_after(api: client.ApiClient) -> None:
    with pytest.raises(ApiError) as caught:
        await request(api, "GET", "/throttled")
    err = caught.value
    assert (err.status, err.reason, err.retry_after) == (429, "TooManyRequests", 3.0)
    assert err.retryable
    assert str(err) == "HTTP 429 TooManyRequests: too many requests, please try again later"
    for header, expected in [
        ("86400", MAX_RETRY_AFTER),
        ("-1", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
    ]:
        with pytest.raises(ApiError) as caught:
            await request(api, "GET", "/throttled", query={"after": header})
        assert caught.value.retry_after == expected, header


async def test_html_502_is_quoted_in_the_message(api: client.ApiClient) -> None:
    with pytest.raises(ApiError) as caught:
        await request(api, "GET", "/bad-gateway")
    err = caught.value
    assert err.status == 502 and err.reason == "Bad Gateway" and err.retryable
    assert err.message.startswith("b'<html><head><title>502 Bad Gateway</title>")
    assert err.message.endswith(" bytes)") and len(err.message) < 200  # an excerpt, not the page
    assert str(err).startswith("HTTP 502 Bad Gateway: b'<html>") and "\n" not in str(err)


async def test_404_from_an_unknown_path_is_not_retryable(api: client.ApiClient) -> None:
    with pytest.raises(ApiError) as caught:
        await request(api, "GET", "/nowhere")
    assert caught.value.status == 404 and not caught.value.retryable


async def test_closed_port_is_status_0(tmp_path: Path, closed_port: int) -> None:
    ac = await make_api_client(write_kubeconfig(tmp_path / "kubeconfig", closed_port))
    async with ac:
        with pytest.raises(ApiError) as caught:
            await request(ac, "GET", "/api/v1/pods")
    err = caught.value
    assert err.status == 0 and err.retryable and err.retry_after is None
    assert err.reason == "ClientConnectorError"
    assert str(err).startswith("no answer: ClientConnectorError: ")


async def test_timeout_is_status_0(api: client.ApiClient) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ApiError) as caught:
        await request(api, "GET", "/slow", timeout=0.2)
    assert loop.time() - started < 2
    err = caught.value
    assert err.status == 0 and err.retryable and "Timeout" in err.reason
    assert str(err).startswith("no answer: ") and "Timeout" in str(err)


async def test_stream_yields_the_body_and_a_dropped_connection_is_status_0(api: client.ApiClient) -> None:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=5)
    async with stream(api, "/lines", query={"end": "1"}, timeout=timeout) as body:
        assert await body.read() == b'{"n": 1}\n{"n": 2}\n'
    received = b""
    with pytest.raises(ApiError) as caught:
        async with stream(api, "/lines", timeout=timeout) as body:
            while chunk := await body.readany():
                received += chunk
    assert received == b'{"n": 1}\n{"n": 2}\n'
    assert caught.value.status == 0 and caught.value.retryable
    with pytest.raises(ApiError) as refused:
        async with stream(api, "/boom", timeout=timeout):
            pytest.fail("a 500 has no stream to read")
    assert (refused.value.status, refused.value.message) == (500, "boom and more")


async def test_through_the_simulated_api_server_with_tls_and_a_token(tmp_path: Path) -> None:
    server = ApiServer(token=TOKEN)  # a token implies TLS: the CA comes from the kubeconfig
    await server.start()
    try:
        ac = await make_api_client(server.write_kubeconfig(str(tmp_path / "kubeconfig")))
        async with ac:
            path = api_path("coordination.k8s.io", "v1", "leases", namespace="default", name="x")
            with pytest.raises(ApiError) as caught:
                await request(ac, "GET", path)
            assert (caught.value.status, caught.value.reason) == (404, "NotFound")
            assert not caught.value.retryable
            collection = api_path("coordination.k8s.io", "v1", "leases", namespace="default")
            lease = {"metadata": {"name": "x"}, "spec": {"holderIdentity": "me"}}
            created = msgspec.json.decode(await request(ac, "POST", collection, body=lease))
            assert created["spec"] == {"holderIdentity": "me"} and created["metadata"]["resourceVersion"]
            with pytest.raises(ApiError) as caught:
                await request(ac, "POST", collection, body=lease)
            assert (caught.value.status, caught.value.reason) == (409, "AlreadyExists")
            assert msgspec.json.decode(await request(ac, "GET", path))["spec"]["holderIdentity"] == "me"
    finally:
        await server.stop()


def test_api_path() -> None:
    assert api_path("", "v1", "pods") == "/api/v1/pods"
    assert (
        api_path("", "v1", "pods", namespace="default", name="web-1", subresource="status")
        == "/api/v1/namespaces/default/pods/web-1/status"
    )
    assert (
        api_path("discovery.k8s.io", "v1", "endpointslices", namespace="shop")
        == "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices"
    )


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(0, True), (408, True), (429, True), (500, True), (503, True), (504, True), (599, True),
     (400, False), (401, False), (403, False), (404, False), (409, False), (410, False), (422, False)],
)  # fmt: skip
def test_retryable(status: int, retryable: bool) -> None:
    assert ApiError(status, "x").retryable is retryable


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0 and parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("0") == 0.0 and parse_retry_after("1e9") == MAX_RETRY_AFTER
    for bad in (None, "", "soon", "-2", "nan", "inf", "Wed, 21 Oct 2015 07:28:00 GMT"):
        assert parse_retry_after(bad) is None, bad


def test_backoff_grows_to_the_cap_with_the_top_of_the_window() -> None:
    b = Backoff(0.1, 1.0, rand=lambda: 1.0)  # the top of every window
    assert [round(b.next(), 6) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    b.reset()
    assert b.next() == pytest.approx(0.1)
    assert Backoff(0.1, 1.0, rand=lambda: 0.0).next() == 0.0  # full jitter: down to nothing
    assert Backoff(0.1, 1.0).delay(10_000) <= 1.0  # no overflow however long it failed


def test_backoff_full_jitter_is_spread_over_the_whole_window() -> None:
    b = Backoff(0.5, 8.0, rand=random.Random(7).random)
    for attempt in range(8):
        ceiling = min(8.0, 0.5 * 2**attempt)
        delays = [b.delay(attempt) for _ in range(2000)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert min(delays) < 0.05 * ceiling and max(delays) > 0.95 * ceiling
        assert 0.45 * ceiling < sum(delays) / len(delays) < 0.55 * ceiling


def test_backoff_never_sooner_than_retry_after() -> None:
    b = Backoff(0.1, 1.0, rand=lambda: 0.5)
    assert b.next(retry_after=3.0) == 3.0  # above the window: the server's word wins
    assert b.next(retry_after=0.01) == pytest.approx(0.1)  # below it: the jittered delay
    assert b.attempt == 2


def test_backoff_rejects_bad_settings() -> None:
    for base, cap in [(0.0, 1.0), (2.0, 1.0), (-1.0, 1.0)]:
        with pytest.raises(ValueError):
            Backoff(base, cap)
