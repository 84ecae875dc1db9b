"""ProviderHttp, the outbound client every adapter uses, against a small local ASGI app
(through httpx.ASGITransport) that plays a provider API and two CDNs by host name.

ASGITransport buffers whole bodies, so the streaming scenario uses a transport whose
response body is produced lazily, chunk by chunk, as the client pulls it."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from vivix.kit.egress import EgressGuard
from vivix.providers.base import (
    ProviderError,
    ProviderFatalError,
    ProviderRetriableError,
)
from vivix.providers.http import (
    MAX_REDIRECTS,
    ProviderHttp,
    decode_data_uri,
    known_content_type,
    parse_retry_after,
    same_origin,
)

API = "https://api.provider.test"
CDN = "https://cdn.elsewhere.test"
KEY = "Bearer sk-secret"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


@dataclass
class Seen:
    host: str
    path: str
    authorization: str | None


@dataclass
class FakeUpstream:
    """A provider API at api.provider.test and a CDN at cdn.elsewhere.test, in one app."""

    seen: list[Seen] = field(default_factory=list)
    # Statuses answered (in order) before the endpoint's normal answer.
    faults: list[tuple[int, dict[str, str], dict[str, str]]] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/file.png", self.file, methods=["GET"]),
                Route("/hop/{n:int}", self.hop, methods=["GET"]),
                Route("/to/{where}", self.redirect, methods=["GET"]),
                Route("/jobs", self.jobs, methods=["GET", "POST"]),
            ]
        )

    def _record(self, request: Request) -> Response | None:
        self.seen.append(
            Seen(request.url.hostname or "", request.url.path, request.headers.get("authorization"))
        )
        if self.faults:
            status, headers, body = self.faults.pop(0)
            return JSONResponse(body, status_code=status, headers=headers)
        return None

    async def file(self, request: Request) -> Response:
        return self._record(request) or Response(PNG, media_type="image/png")

    async def hop(self, request: Request) -> Response:
        # Relative redirects down to /hop/0, which serves the file.
        n = request.path_params["n"]
        if (fault := self._record(request)) is not None:
            return fault
        if n == 0:
            return Response(PNG, media_type="image/png")
        return RedirectResponse(f"/hop/{n - 1}", status_code=302)

    async def redirect(self, request: Request) -> Response:
        if (fault := self._record(request)) is not None:
            return fault
        targets = {
            "cdn": f"{CDN}/file.png",
            "cdn-then-back": f"{CDN}/to/api",
            "api": f"{API}/file.png",
            "http-downgrade": "http://api.provider.test/file.png",
            "ftp": "ftp://files.provider.test/file.png",
            "metadata": "http://169.254.169.254/latest/meta-data/",
            "cdn-then-private": f"{CDN}/to/private-name",
            "private-name": "https://assets.internal.test/file.png",
        }
        return RedirectResponse(targets[request.path_params["where"]], status_code=307)

    async def jobs(self, request: Request) -> Response:
        return self._record(request) or JSONResponse({"ok": True})


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
async def http(upstream: FakeUpstream) -> AsyncIterator[ProviderHttp]:
    client = make_http(httpx.ASGITransport(app=upstream.app()))
    yield client
    await client.aclose()


PUBLIC_ADDRESS = "93.184.215.14"


async def public_dns(host: str, port: int, /) -> list[str]:
    """Stands in for the internet's DNS: every CDN name is a public address."""
    return [PUBLIC_ADDRESS]


def make_http(transport: httpx.AsyncBaseTransport, **overrides: object) -> ProviderHttp:
    settings: dict[str, object] = {
        "headers": {"Authorization": KEY},
        "backoff_s": 0.001,
        "egress": EgressGuard(resolver=public_dns),
    }
    settings.update(overrides)
    return ProviderHttp("acme", API, transport=transport, **settings)  # type: ignore[arg-type]


# -- redirects and credentials -----------------------------------------------------------


async def test_download_follows_redirects_on_the_providers_own_origin_with_credentials(
    http: ProviderHttp, upstream: FakeUpstream
) -> None:
    data, content_type = await http.download(f"{API}/hop/3")

    assert (data, content_type) == (PNG, "image/png")
    assert [seen.path for seen in upstream.seen] == ["/hop/3", "/hop/2", "/hop/1", "/hop/0"]
    assert {seen.authorization for seen in upstream.seen} == {KEY}


async def test_a_redirect_to_another_origin_drops_the_credentials(
    http: ProviderHttp, upstream: FakeUpstream
) -> None:
    data, _ = await http.download(f"{API}/to/cdn")

    assert data == PNG
    assert [(s.host, s.authorization) for s in upstream.seen] == [
        ("api.provider.test", KEY),
        ("cdn.elsewhere.test", None),
    ]


async def test_credentials_are_not_regained_when_a_cdn_redirects_back(
    http: ProviderHttp, upstream: FakeUpstream
) -> None:
    await http.download(f"{API}/to/cdn-then-back")

    assert [(s.host, s.path, s.authorization) for s in upstream.seen] == [
        ("api.provider.test", "/to/cdn-then-back", KEY),
        ("cdn.elsewhere.test", "/to/api", None),
        ("api.provider.test", "/file.png", None),
    ]


async def test_a_scheme_downgrade_on_the_same_host_is_another_origin(
    http: ProviderHttp, upstream: FakeUpstream
) -> None:
    await http.download(f"{API}/to/http-downgrade")

    assert [s.authorization for s in upstream.seen] == [KEY, None]


async def test_a_download_from_a_cdn_never_carries_credentials(
    http: ProviderHttp, upstream: FakeUpstream
) -> None:
    await http.download(f"{CDN}/file.png")

    assert upstream.seen == [Seen("cdn.elsewhere.test", "/file.png", None)]


async def test_more_than_five_redirects_is_retriable_without_resubmitting(
    http: ProviderHttp, upstream: FakeUpstream
) -> None:
    with pytest.raises(ProviderRetriableError, match="redirected more than") as caught:
        await http.download(f"{API}/hop/{MAX_REDIRECTS + 1}")

    assert caught.value.resubmit is False
    assert len(upstream.seen) == MAX_REDIRECTS + 1

    upstream.seen.clear()
    assert (await http.download(f"{API}/hop/{MAX_REDIRECTS}"))[0] == PNG


async def test_a_redirect_to_a_non_http_scheme_is_refused(
    http: ProviderHttp, upstream: FakeUpstream
) -> None:
    with pytest.raises(ProviderRetriableError, match="non-HTTP"):
        await http.download(f"{API}/to/ftp")

    assert len(upstream.seen) == 1


async def test_off_origin_downloads_connect_to_the_checked_address_under_their_name() -> None:
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, content=PNG, headers={"content-type": "image/png"})

    http = make_http(httpx.MockTransport(answer))
    try:
        assert (await http.download(f"{CDN}/file.png?sig=1"))[0] == PNG
        assert (await http.download(f"{API}/file.png"))[0] == PNG
    finally:
        await http.aclose()
    cdn, api = sent
    # The CDN: pinned to the address the guard checked, its name in Host and TLS SNI.
    assert (cdn.url.host, cdn.url.path, cdn.url.query) == (PUBLIC_ADDRESS, "/file.png", b"sig=1")
    assert cdn.headers["host"] == "cdn.elsewhere.test"
    assert cdn.extensions["sni_hostname"] == "cdn.elsewhere.test"
    assert "authorization" not in cdn.headers
    # The provider's own (configured) origin is used as is, with its credentials.
    assert (api.url.host, api.headers["authorization"]) == ("api.provider.test", KEY)


@pytest.mark.parametrize(
    "start",
    [f"{API}/to/metadata", f"{API}/to/cdn-then-private", "http://10.0.0.8/file.png"],
    ids=["redirect-to-metadata", "second-hop-to-a-private-name", "private-cdn"],
)
async def test_an_output_off_the_origin_at_a_private_address_is_refused(
    upstream: FakeUpstream, start: str
) -> None:
    async def split_dns(host: str, port: int, /) -> list[str]:
        return ["10.20.30.40"] if host.endswith(".internal.test") else [PUBLIC_ADDRESS]

    http = make_http(
        httpx.ASGITransport(app=upstream.app()), egress=EgressGuard(resolver=split_dns)
    )
    try:
        with pytest.raises(ProviderRetriableError, match="address was refused") as refused:
            await http.download(start)
    finally:
        await http.aclose()
    assert refused.value.resubmit is False
    # Only the hops before the refused one were requested.
    assert all(seen.host in ("api.provider.test", "cdn.elsewhere.test") for seen in upstream.seen)


def test_origins_compare_scheme_host_and_port() -> None:
    assert same_origin("https://API.provider.test:443/a", "https://api.provider.test/b")
    assert not same_origin("https://api.provider.test:8443/a", "https://api.provider.test/a")
    assert not same_origin("http://api.provider.test/a", "https://api.provider.test/a")
    assert not same_origin("https://api.provider.test.evil/a", "https://api.provider.test/a")


async def test_urls_a_provider_hands_out_are_sent_to_the_configured_base_url() -> None:
    client = ProviderHttp("acme", "http://proxy.test/acme")
    await client.aclose()

    assert client.on_base_url("https://api.provider.test/v1/jobs/1?x=1") == (
        "http://proxy.test/acme/v1/jobs/1?x=1"
    )
    assert client.on_base_url("http://proxy.test/acme/v1/jobs/1") == (
        "http://proxy.test/acme/v1/jobs/1"
    )


# -- download outcomes -------------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 410])
async def test_a_gone_output_file_asks_for_a_new_submission(
    http: ProviderHttp, upstream: FakeUpstream, status: int
) -> None:
    upstream.faults.append((status, {}, {"error": "not found"}))

    with pytest.raises(ProviderRetriableError, match=str(status)) as caught:
        await http.download(f"{CDN}/file.png")

    assert caught.value.resubmit is True


async def test_an_unreachable_output_file_is_polled_again(
    http: ProviderHttp, upstream: FakeUpstream
) -> None:
    upstream.faults.extend([(503, {}, {"error": "busy"})] * 10)

    with pytest.raises(ProviderRetriableError, match="503") as caught:
        await http.download(f"{CDN}/file.png")

    assert caught.value.resubmit is False
    assert len(upstream.seen) == 4  # the first try and three retries


async def test_a_flaky_cdn_is_retried_within_one_download(
    http: ProviderHttp, upstream: FakeUpstream
) -> None:
    upstream.faults.extend([(502, {}, {"error": "bad gateway"})] * 2)

    assert (await http.download(f"{CDN}/file.png"))[0] == PNG
    assert len(upstream.seen) == 3


def test_data_uris_decode_and_unreadable_ones_ask_for_a_new_submission() -> None:
    assert decode_data_uri("data:image/png;base64,iVBORw0KGgo=", "acme") == (
        b"\x89PNG\r\n\x1a\n",
        "image/png",
    )
    assert decode_data_uri("data:,a%20b", "acme") == (b"a b", "application/octet-stream")

    with pytest.raises(ProviderRetriableError, match="unreadable") as caught:
        decode_data_uri("data:image/png;base64,not base64!", "acme")
    assert caught.value.resubmit is True


async def test_download_decodes_a_data_uri_without_a_request(
    http: ProviderHttp, upstream: FakeUpstream
) -> None:
    assert await http.download("data:text/plain,hello") == (b"hello", "text/plain")
    assert upstream.seen == []


def test_generic_served_types_fall_back_to_the_declared_type_then_the_file_name() -> None:
    assert known_content_type("image/webp", "https://cdn/x.png", "image/png") == "image/webp"
    assert known_content_type("application/octet-stream", "https://cdn/x", "image/png") == (
        "image/png"
    )
    assert known_content_type("", "https://cdn/clip.mp4?sig=1") == "video/mp4"
    assert known_content_type("", "data:,x") == "application/octet-stream"


class LazyBody:
    """A transport whose 200 body is produced one chunk at a time as the client reads."""

    def __init__(self, chunk: bytes, chunks: int, declare_length: bool = False) -> None:
        self.chunk = chunk
        self.chunks = chunks
        self.declare_length = declare_length
        self.produced = 0
        self.closed = False

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "video/mp4"}
        if self.declare_length:
            headers["content-length"] = str(len(self.chunk) * self.chunks)
        return httpx.Response(200, headers=headers, stream=self.Body(self))

    class Body(httpx.AsyncByteStream):
        def __init__(self, outer: LazyBody) -> None:
            self.outer = outer

        async def __aiter__(self) -> AsyncIterator[bytes]:
            for _ in range(self.outer.chunks):
                self.outer.produced += 1
                yield self.outer.chunk

        async def aclose(self) -> None:
            self.outer.closed = True


async def test_a_download_stops_reading_as_soon_as_it_passes_the_size_limit() -> None:
    body = LazyBody(b"x" * 1024, chunks=10_000)  # 10 MB on offer
    client = make_http(body.transport())

    with pytest.raises(ProviderFatalError, match="larger than 4096 bytes"):
        await client.download(f"{CDN}/big.mp4", max_bytes=4096)
    await client.aclose()

    assert body.produced == 5  # the chunk that crossed the limit, and not one more
    assert body.closed


async def test_a_declared_length_over_the_limit_fails_before_reading() -> None:
    body = LazyBody(b"x" * 1024, chunks=100, declare_length=True)
    client = make_http(body.transport())

    with pytest.raises(ProviderFatalError, match="larger than"):
        await client.download(f"{CDN}/big.mp4", max_bytes=4096)
    await client.aclose()

    assert body.produced == 0
    assert body.closed


async def test_a_body_exactly_at_the_limit_is_delivered() -> None:
    body = LazyBody(b"x" * 1024, chunks=4)
    client = make_http(body.transport())

    data, content_type = await client.download(f"{CDN}/ok.mp4", max_bytes=4096)
    await client.aclose()

    assert (len(data), content_type) == (4096, "video/mp4")


class BreaksOff:
    """A transport whose 200 bodies break off after one chunk, `times` times."""

    def __init__(self, times: int) -> None:
        self.times = times
        self.requests = 0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        broken = self.requests <= self.times
        return httpx.Response(200, headers={"content-type": "image/png"}, stream=self.Body(broken))

    class Body(httpx.AsyncByteStream):
        def __init__(self, broken: bool) -> None:
            self.broken = broken

        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield PNG[:8]
            if self.broken:
                raise httpx.ReadError("connection reset by peer")
            yield PNG[8:]


async def test_a_body_that_breaks_off_is_downloaded_again() -> None:
    upstream = BreaksOff(times=2)
    client = make_http(upstream.transport())

    assert await client.download(f"{CDN}/file.png") == (PNG, "image/png")
    await client.aclose()

    assert upstream.requests == 3


async def test_a_body_that_keeps_breaking_off_is_left_for_the_next_poll() -> None:
    upstream = BreaksOff(times=100)
    client = make_http(upstream.transport())

    with pytest.raises(ProviderRetriableError, match="broke off") as caught:
        await client.download(f"{CDN}/file.png")
    await client.aclose()

    assert caught.value.resubmit is False
    assert upstream.requests == 4  # the first try and three retries


# -- retries -----------------------------------------------------------------------------


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    in_a_minute = email.utils.formatdate(time.time() + 60, usegmt=True)
    an_hour_ago = email.utils.formatdate(time.time() - 3600, usegmt=True)

    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0.25 ") == 0.25
    assert 58 <= (parse_retry_after(in_a_minute) or 0) <= 60
    assert parse_retry_after(an_hour_ago) == 0.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


@pytest.mark.parametrize(
    "retry_after",
    [pytest.param("0.05", id="seconds"), pytest.param("date", id="http-date")],
)
async def test_a_429_waits_as_retry_after_says_in_either_form(
    upstream: FakeUpstream, retry_after: str
) -> None:
    # A backoff this long would blow the time limit: only Retry-After can make it pass.
    client = make_http(
        httpx.ASGITransport(app=upstream.app()), backoff_s=30.0, max_retry_after_s=0.05
    )
    if retry_after == "date":  # an hour away, so only the cap makes it short
        retry_after = email.utils.formatdate(time.time() + 3600, usegmt=True)
    upstream.faults.append((429, {"Retry-After": retry_after}, {"error": "slow down"}))
    delays: list[float] = []
    compute_delay = client._delay

    def recording_delay(attempt: int, announced: float | None) -> float:
        delays.append(compute_delay(attempt, announced))
        return delays[-1]

    client._delay = recording_delay  # type: ignore[method-assign]

    response = await client.request("POST", "/jobs", json={}, idempotent=False)
    await client.aclose()

    assert response.status_code == 200
    assert delays == [0.05]
    assert len(upstream.seen) == 2


def timing_out(method_calls: list[str]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        method_calls.append(request.method)
        raise httpx.ReadTimeout("the answer never came", request=request)

    return httpx.MockTransport(handle)


async def test_a_post_is_not_resent_after_a_read_timeout() -> None:
    # The upstream may have accepted (and billed) it: a resend could pay twice.
    calls: list[str] = []
    client = make_http(timing_out(calls))

    with pytest.raises(ProviderRetriableError, match="ReadTimeout") as caught:
        await client.request("POST", "/jobs", json={}, idempotent=False)
    await client.aclose()

    assert calls == ["POST"]
    assert caught.value.resubmit is False


async def test_a_get_is_retried_after_a_read_timeout() -> None:
    calls: list[str] = []
    client = make_http(timing_out(calls))

    with pytest.raises(ProviderRetriableError, match="ReadTimeout"):
        await client.request("GET", "/jobs")
    await client.aclose()

    assert calls == ["GET"] * 4


async def test_a_500_to_a_post_is_not_resent_but_a_503_is(upstream: FakeUpstream) -> None:
    client = make_http(httpx.ASGITransport(app=upstream.app()))
    upstream.faults.append((500, {}, {"error": "oops"}))

    with pytest.raises(ProviderRetriableError, match="500"):
        await client.request("POST", "/jobs", json={}, idempotent=False)
    assert len(upstream.seen) == 1

    upstream.faults.append((503, {}, {"error": "not now"}))
    assert (await client.request("POST", "/jobs", json={}, idempotent=False)).status_code == 200
    await client.aclose()
    assert len(upstream.seen) == 3


# -- classify_error ----------------------------------------------------------------------


def quota_is_fatal(response: httpx.Response) -> ProviderError | None:
    if response.status_code == 429 and "quota" in response.text:
        return ProviderFatalError("no quota left")
    return None


async def test_a_classified_answer_is_raised_at_once_instead_of_retried(
    upstream: FakeUpstream,
) -> None:
    client = make_http(httpx.ASGITransport(app=upstream.app()), classify_error=quota_is_fatal)
    upstream.faults.extend([(429, {}, {"error": "insufficient quota"})] * 5)

    with pytest.raises(ProviderFatalError, match="no quota left"):
        await client.request("POST", "/jobs", json={}, idempotent=False)
    await client.aclose()

    assert len(upstream.seen) == 1


async def test_an_answer_the_classifier_leaves_alone_is_retried_as_usual(
    upstream: FakeUpstream,
) -> None:
    client = make_http(httpx.ASGITransport(app=upstream.app()), classify_error=quota_is_fatal)
    upstream.faults.extend([(429, {}, {"error": "rate limited"})] * 2)

    response = await client.request("POST", "/jobs", json={}, idempotent=False)
    await client.aclose()

    assert response.status_code == 200
    assert len(upstream.seen) == 3


async def test_a_call_can_bring_its_own_classifier(
    http: ProviderHttp, upstream: FakeUpstream
) -> None:
    seen_statuses: list[int] = []

    def final_on_502(response: httpx.Response) -> ProviderError | None:
        seen_statuses.append(response.status_code)
        if response.status_code == 502:
            return ProviderRetriableError("the job failed", resubmit=True)
        return None

    upstream.faults.extend([(503, {}, {}), (502, {}, {})])
    classify: Callable[[httpx.Response], ProviderError | None] = final_on_502

    with pytest.raises(ProviderRetriableError, match="the job failed") as caught:
        await http.request("GET", "/jobs", classify_error=classify)

    assert caught.value.resubmit is True
    assert seen_statuses == [503, 502]
    # Non-retriable answers are the adapter's to map: the classifier never sees them.
    upstream.faults.append((404, {}, {}))
    assert (await http.request("GET", "/jobs", classify_error=classify)).status_code == 404
    assert seen_statuses == [503, 502]


# -- the per-provider concurrency cap ----------------------------------------------------


class GatedUpstream:
    """Holds every request until `gate` opens, counting how many are inside at once."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.arrived = 0
        self.inside = 0
        self.most_inside = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.arrived += 1
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        try:
            await self.gate.wait()
        finally:
            self.inside -= 1
        return httpx.Response(200, json={"path": request.url.path})

    async def until_arrived(self, count: int) -> None:
        async with asyncio.timeout(10):
            while True:
                if self.arrived >= count:
                    break
                await asyncio.sleep(0)
        for _ in range(200):  # let every other waiting request try its luck
            await asyncio.sleep(0)


async def test_no_more_than_the_cap_of_requests_are_in_flight_at_once() -> None:
    upstream = GatedUpstream()
    client = make_http(httpx.MockTransport(upstream.handle), max_concurrent_requests=3)

    calls = [
        asyncio.create_task(client.request("POST" if i % 2 else "GET", f"/jobs/{i}"))
        for i in range(8)
    ]
    await upstream.until_arrived(3)
    assert (upstream.arrived, upstream.inside) == (3, 3), "the other five wait for a slot"
    upstream.gate.set()
    responses = await asyncio.gather(*calls)
    await client.aclose()

    assert [r.status_code for r in responses] == [200] * 8
    assert upstream.arrived == 8
    assert upstream.most_inside == 3


async def test_each_provider_has_its_own_cap() -> None:
    upstream = GatedUpstream()
    first = make_http(httpx.MockTransport(upstream.handle), max_concurrent_requests=1)
    second = make_http(httpx.MockTransport(upstream.handle), max_concurrent_requests=1)

    calls = [asyncio.create_task(c.request("GET", "/jobs")) for c in (first, first, second)]
    await upstream.until_arrived(2)
    assert upstream.inside == 2, "one from each provider; the first's second call waits"
    upstream.gate.set()
    await asyncio.gather(*calls)
    await first.aclose()
    await second.aclose()

    assert upstream.arrived == 3


async def test_a_retry_waits_for_its_backoff_outside_the_slot() -> None:
    # A 429 answered to one call must not keep the only slot through its Retry-After.
    answers = [httpx.Response(429, headers={"Retry-After": "0.2"}), httpx.Response(200)]
    order: list[str] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        order.append(request.url.path)
        return answers.pop(0) if request.url.path == "/slow" else httpx.Response(200)

    client = make_http(httpx.MockTransport(handle), max_concurrent_requests=1)
    slow = asyncio.create_task(client.request("GET", "/slow"))
    async with asyncio.timeout(10):
        while True:
            if order:
                break
            await asyncio.sleep(0)
    await client.request("GET", "/fast")  # gets the slot while /slow backs off
    await slow
    await client.aclose()

    assert order == ["/slow", "/fast", "/slow"]
