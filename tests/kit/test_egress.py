"""The guarded fetcher for client-supplied URLs.

Network safety: nothing here leaves this machine. Host names go through `MapResolver`
(never DNS); the only real connections are to the `ImageServer` on 127.0.0.1, reached on
purpose through `images.example` in `allow_private_hosts`, and a `LoopbackOnlyTransport`
fails the test instead of connecting anywhere else. Public addresses appear only in
check-only tests or behind `httpx.MockTransport`, which sends nothing.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from vivix.kit.egress import (
    FetchedFile,
    FetchFailed,
    GuardedFetcher,
    UrlRefused,
    check_url,
)

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6300010000050001"
    "0d0a2db40000000049454e44ae426082"
)
PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"


class MapResolver:
    """Resolves from a dict and records every lookup; unknown names do not resolve."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.lookups: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int, /) -> list[str]:
        self.lookups.append((host, port))
        return list(self.answers.get(host, []))


class LoopbackOnlyTransport(httpx.AsyncBaseTransport):
    """A real transport that records where each request goes and refuses (failing the
    test) anything that is not this machine."""

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self.inner = inner or httpx.AsyncHTTPTransport()
        self.sent: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        if request.url.host not in ("127.0.0.1", "::1"):
            pytest.fail(f"the fetcher tried to connect to {request.url.host}")
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


Route = Callable[[asyncio.StreamWriter], Awaitable[None]]


@dataclass
class ImageServer:
    """A raw HTTP/1.1 responder on 127.0.0.1 that records the paths it was asked for."""

    port: int = 0
    paths: list[str] = field(default_factory=list)
    host_headers: list[str] = field(default_factory=list)
    streamed_bytes: int = 0
    stream_gave_up: asyncio.Event = field(default_factory=asyncio.Event)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            path = request_line.split(" ")[1]
            self.paths.append(path)
            for line in header_lines:
                name, _, value = line.partition(":")
                if name.lower() == "host":
                    self.host_headers.append(value.strip())
            await self._routes().get(path, self._not_found)(writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    def url(self, path: str, host: str = "images.example", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def _routes(self) -> dict[str, Route]:
        return {
            "/cat.png": lambda w: self._respond(w, 200, "image/png; charset=binary", PNG),
            "/secret": lambda w: self._respond(w, 200, "image/png", b"SECRET"),
            "/page.html": lambda w: self._respond(w, 200, "text/html", b"<html></html>"),
            "/to-secret": lambda w: self._redirect(w, f"http://127.0.0.1:{self.port}/secret"),
            "/to-evil": lambda w: self._redirect(w, "http://evil.example/steal"),
            "/to-cat": lambda w: self._redirect(w, "/cat.png"),
            "/loop": lambda w: self._redirect(w, "/loop"),
            "/huge-declared": self._huge_declared,
            "/huge-streamed": self._huge_streamed,
            "/slow": self._slow,
            "/trickle": self._trickle,
        }

    async def _respond(
        self, writer: asyncio.StreamWriter, status: int, content_type: str, body: bytes
    ) -> None:
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()

    async def _not_found(self, writer: asyncio.StreamWriter) -> None:
        await self._respond(writer, 404, "text/plain", b"not found")

    async def _redirect(self, writer: asyncio.StreamWriter, location: str) -> None:
        writer.write(
            f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode()
        )
        await writer.drain()

    async def _huge_declared(self, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 1000000000\r\n\r\n"
            + PNG
        )
        await writer.drain()

    async def _huge_streamed(self, writer: asyncio.StreamWriter) -> None:
        # No Content-Length: the body ends when the connection closes. Keep writing until
        # the client hangs up; 256 MiB would take a while, so an early stop is the client's.
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n")
        chunk = b"\0" * 65536
        try:
            while self.streamed_bytes < 256 * 1024 * 1024:
                writer.write(chunk)
                await writer.drain()
                self.streamed_bytes += len(chunk)
        except ConnectionError:
            self.stream_gave_up.set()

    async def _slow(self, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async def _trickle(self, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n")
        while True:  # one byte every 50 ms never trips a per-read timeout
            writer.write(b"\0")
            await writer.drain()
            await asyncio.sleep(0.05)


@pytest.fixture
async def image_server() -> AsyncIterator[ImageServer]:
    server = ImageServer()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        await server.stop()
        await listener.wait_closed()


@dataclass
class TlsSetup:
    server_context: ssl.SSLContext
    client_context: ssl.SSLContext  # trusts only the test CA
    sni_names: list[str | None]


@pytest.fixture
def tls_setup() -> TlsSetup:
    """A throwaway CA and a certificate for images.example (and nothing else)."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: str,
        signer: ec.EllipticCurvePrivateKey,
        *,
        ca: bool,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = certificate("Vivix test CA", ca_key, "Vivix test CA", ca_key, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = certificate("images.example", leaf_key, "Vivix test CA", ca_key, ca=False)

    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf_pem = leaf_cert.public_bytes(serialization.Encoding.PEM)
    key_pem = leaf_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # load_cert_chain only reads files.
    with tempfile.TemporaryDirectory() as directory:
        cert_file, key_file = Path(directory, "cert.pem"), Path(directory, "key.pem")
        cert_file.write_bytes(leaf_pem)
        key_file.write_bytes(key_pem)
        server_context.load_cert_chain(cert_file, key_file)
    sni_names: list[str | None] = []
    server_context.sni_callback = lambda _sock, name, _ctx: sni_names.append(name)
    client_context = ssl.create_default_context(
        cadata=ca_cert.public_bytes(serialization.Encoding.PEM).decode()
    )
    return TlsSetup(server_context, client_context, sni_names)


@pytest.fixture
async def tls_image_server(tls_setup: TlsSetup) -> AsyncIterator[ImageServer]:
    server = ImageServer()
    listener = await asyncio.start_server(
        server.handle, "127.0.0.1", 0, ssl=tls_setup.server_context
    )
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        await server.stop()
        await listener.wait_closed()


@pytest.fixture
def resolver() -> MapResolver:
    return MapResolver(
        {
            "images.example": ["127.0.0.1"],
            "evil.example": ["10.0.0.1"],
            "public.example": [PUBLIC_V4, PUBLIC_V6],
        }
    )


@pytest.fixture
def loopback_transport() -> LoopbackOnlyTransport:
    return LoopbackOnlyTransport()


def trusting_images_example(
    resolver: MapResolver,
    transport: httpx.AsyncBaseTransport | None,
    *,
    max_bytes: int = 20 * 1024 * 1024,
    timeout_s: float = 10.0,
    max_redirects: int = 3,
) -> GuardedFetcher:
    """The only fetcher allowed to reach 127.0.0.1: the operator trusts images.example."""
    return GuardedFetcher(
        resolver=resolver,
        allow_private_hosts=frozenset({"images.example"}),
        transport=transport,
        max_bytes=max_bytes,
        timeout_s=timeout_s,
        max_redirects=max_redirects,
    )


# --- check_url: the policy, without any request -------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected_reason"),
    [
        ("http://127.0.0.1/x", "loopback"),
        ("http://10.1.2.3/", "private address"),
        ("http://172.16.0.1/", "private address"),
        ("http://192.168.1.1/", "private address"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://169.254.1.1/", "link-local"),
        ("http://[::1]/", "loopback"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[fe80::1%25eth0]/", "link-local"),
        ("http://[fc00::1]/", "unique-local"),
        ("http://100.64.0.1/", "carrier-grade NAT"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://[::]/", "unspecified"),
        ("http://2130706433/", "loopback address (127.0.0.1)"),
        ("http://0x7f000001/", "loopback address (127.0.0.1)"),
        ("http://0x7f.1/", "loopback address (127.0.0.1)"),
        ("http://127.1/", "loopback address (127.0.0.1)"),
        ("http://[::ffff:127.0.0.1]/", "IPv4-mapped form of a loopback address (127.0.0.1)"),
        ("http://[::ffff:10.0.0.1]/", "IPv4-mapped form of a private address (10.0.0.1)"),
        ("http://[::10.0.0.1]/", "IPv4-compatible address embedding a private address"),
        ("http://[2002:a00:1::]/", "6to4 tunnel address embedding a private address (10.0.0.1)"),
        ("http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/", "Teredo tunnel address embedding"),
        ("http://[64:ff9b::a00:1]/", "NAT64 address embedding a private address (10.0.0.1)"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[ff02::1]/", "multicast"),
        ("http://255.255.255.255/", "broadcast"),
        ("http://240.0.0.1/", "reserved"),
        ("http://192.0.2.1/", "documentation"),
        ("http://203.0.113.10/", "documentation"),
        ("http://[2001:db8::1]/", "documentation"),
        ("http://198.18.0.1/", "benchmarking"),
    ],
)
async def test_check_url_refuses_non_public_literal_addresses(
    url: str, expected_reason: str, resolver: MapResolver
) -> None:
    with pytest.raises(UrlRefused) as refused:
        await check_url(url, resolver)

    assert expected_reason in refused.value.reason
    assert resolver.lookups == []  # literals are judged without any lookup


async def test_check_url_refuses_localhost_via_the_system_resolver() -> None:
    with pytest.raises(UrlRefused, match="localhost resolves to a loopback address"):
        await check_url("http://localhost/")


async def test_check_url_refuses_a_name_resolving_to_a_private_address(
    resolver: MapResolver,
) -> None:
    with pytest.raises(UrlRefused) as refused:
        await check_url("http://evil.example/x", resolver)

    assert refused.value.reason == "evil.example resolves to a private address (10.0.0.1)"


async def test_check_url_refuses_when_any_of_several_addresses_is_private() -> None:
    resolver = MapResolver({"mixed.example": [PUBLIC_V4, "192.168.0.7"]})

    with pytest.raises(UrlRefused, match=r"private address \(192\.168\.0\.7\)"):
        await check_url("https://mixed.example/", resolver)


@pytest.mark.parametrize("answers", [[], "gaierror"])
async def test_check_url_refuses_a_name_that_does_not_resolve(answers: object) -> None:
    async def failing_resolver(host: str, port: int, /) -> list[str]:
        if answers == "gaierror":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return []

    with pytest.raises(UrlRefused, match=r"nowhere\.example does not resolve"):
        await check_url("http://nowhere.example/", failing_resolver)


@pytest.mark.parametrize(
    ("url", "expected_reason"),
    [
        ("ftp://public.example/x", "scheme 'ftp' is not allowed"),
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("javascript:alert(1)", "scheme 'javascript' is not allowed"),
        ("http:///x", "no host"),
        ("http://user:hunter2@public.example/", "must not contain credentials"),
        ("http://evil.example\\@public.example/", "must not contain credentials"),
        ("http://public.example:0/", "port 0 is out of range"),
        ("http://public.example:65536/", "port 65536 is out of range"),
        ("http://1.2.3.4.5/", "not a valid IP address"),
        ("http://0177.0.0.1/", "not a valid URL"),
        ("http://exa%20mple.example/", "not a valid host name"),
    ],
)
async def test_check_url_refuses_malformed_or_disallowed_urls(
    url: str, expected_reason: str, resolver: MapResolver
) -> None:
    with pytest.raises(UrlRefused) as refused:
        await check_url(url, resolver)

    assert expected_reason in refused.value.reason
    assert "hunter2" not in refused.value.reason


async def test_check_url_accepts_a_public_name_on_any_port_without_fetching(
    resolver: MapResolver,
) -> None:
    addresses = await check_url("https://public.example:8443/cat.png", resolver)

    assert addresses == [ipaddress.ip_address(PUBLIC_V4), ipaddress.ip_address(PUBLIC_V6)]
    assert resolver.lookups == [("public.example", 8443)]


async def test_check_url_normalizes_an_ipv4_mapped_public_address() -> None:
    assert await check_url(f"http://[::ffff:{PUBLIC_V4}]/") == [ipaddress.ip_address(PUBLIC_V4)]


async def test_check_url_skips_the_address_check_only_for_trusted_hosts(
    resolver: MapResolver,
) -> None:
    trusted = frozenset({"images.example"})

    assert await check_url("http://IMAGES.example/a.png", resolver, allow_private_hosts=trusted)
    with pytest.raises(UrlRefused):
        await check_url("http://evil.example/", resolver, allow_private_hosts=trusted)


# --- fetch through a real listener on 127.0.0.1 -------------------------------------------


async def test_fetch_downloads_a_png_from_a_trusted_host(
    image_server: ImageServer, resolver: MapResolver
) -> None:
    # The production default transport, not the loopback-only wrapper.
    async with trusting_images_example(resolver, transport=None) as fetcher:
        fetched = await fetcher.fetch(image_server.url("/cat.png"))

    assert fetched == FetchedFile(
        url=image_server.url("/cat.png"),
        final_url=image_server.url("/cat.png"),
        data=PNG,
        content_type="image/png",
    )
    assert image_server.host_headers == [f"images.example:{image_server.port}"]


async def test_fetch_follows_a_relative_redirect_on_the_same_host(
    image_server: ImageServer, resolver: MapResolver, loopback_transport: LoopbackOnlyTransport
) -> None:
    async with trusting_images_example(resolver, loopback_transport) as fetcher:
        fetched = await fetcher.fetch(image_server.url("/to-cat"))

    assert fetched.data == PNG
    assert fetched.final_url == image_server.url("/cat.png")
    assert image_server.paths == ["/to-cat", "/cat.png"]
    assert resolver.lookups == [("images.example", image_server.port)] * 2  # checked per hop


async def test_redirect_to_a_loopback_address_is_refused_before_any_request(
    image_server: ImageServer, resolver: MapResolver, loopback_transport: LoopbackOnlyTransport
) -> None:
    async with trusting_images_example(resolver, loopback_transport) as fetcher:
        with pytest.raises(UrlRefused) as refused:
            await fetcher.fetch(image_server.url("/to-secret"))

    assert refused.value.reason.startswith(
        f"redirect to http://127.0.0.1:{image_server.port}/secret refused"
    )
    assert "loopback" in refused.value.reason
    assert image_server.paths == ["/to-secret"]
    assert "/secret" not in image_server.paths


async def test_redirect_to_a_name_resolving_to_a_private_address_is_refused(
    image_server: ImageServer, resolver: MapResolver, loopback_transport: LoopbackOnlyTransport
) -> None:
    async with trusting_images_example(resolver, loopback_transport) as fetcher:
        with pytest.raises(UrlRefused) as refused:
            await fetcher.fetch(image_server.url("/to-evil"))

    assert refused.value.reason == (
        "redirect to http://evil.example/steal refused: "
        "evil.example resolves to a private address (10.0.0.1)"
    )
    assert ("evil.example", 80) in resolver.lookups
    # One request, to the listener; 10.0.0.1 was never a connection target.
    assert [request.url.host for request in loopback_transport.sent] == ["127.0.0.1"]
    assert image_server.paths == ["/to-evil"]


async def test_too_many_redirects_fail(
    image_server: ImageServer, resolver: MapResolver, loopback_transport: LoopbackOnlyTransport
) -> None:
    async with trusting_images_example(resolver, loopback_transport, max_redirects=2) as fetcher:
        with pytest.raises(FetchFailed, match="more than 2 redirects"):
            await fetcher.fetch(image_server.url("/loop"))

    assert image_server.paths == ["/loop"] * 3


async def test_a_declared_oversized_body_is_refused_before_reading_it(
    image_server: ImageServer, resolver: MapResolver, loopback_transport: LoopbackOnlyTransport
) -> None:
    async with trusting_images_example(resolver, loopback_transport) as fetcher:
        with pytest.raises(FetchFailed, match=r"larger than 20971520 bytes \(1000000000"):
            await fetcher.fetch(image_server.url("/huge-declared"))


async def test_an_endless_body_stops_at_max_bytes_and_drops_the_connection(
    image_server: ImageServer, resolver: MapResolver, loopback_transport: LoopbackOnlyTransport
) -> None:
    async with trusting_images_example(resolver, loopback_transport, max_bytes=100_000) as fetcher:
        with pytest.raises(FetchFailed, match="larger than 100000 bytes"):
            await fetcher.fetch(image_server.url("/huge-streamed"))

    # The server's writes fail once the client hangs up, long before its 256 MiB are out.
    await asyncio.wait_for(image_server.stream_gave_up.wait(), timeout=5)
    assert image_server.streamed_bytes < 64 * 1024 * 1024


async def test_a_disallowed_content_type_fails(
    image_server: ImageServer, resolver: MapResolver, loopback_transport: LoopbackOnlyTransport
) -> None:
    async with trusting_images_example(resolver, loopback_transport) as fetcher:
        with pytest.raises(FetchFailed, match="content type 'text/html' is not one of"):
            await fetcher.fetch(image_server.url("/page.html"))


async def test_a_404_fails_with_the_status(
    image_server: ImageServer, resolver: MapResolver, loopback_transport: LoopbackOnlyTransport
) -> None:
    async with trusting_images_example(resolver, loopback_transport) as fetcher:
        with pytest.raises(FetchFailed, match="HTTP 404"):
            await fetcher.fetch(image_server.url("/missing.png"))


@pytest.mark.parametrize("path", ["/slow", "/trickle"])
async def test_a_slow_server_times_out(
    path: str,
    image_server: ImageServer,
    resolver: MapResolver,
    loopback_transport: LoopbackOnlyTransport,
) -> None:
    # /trickle sends a byte every 50 ms: only the deadline on the whole fetch catches it.
    async with trusting_images_example(resolver, loopback_transport, timeout_s=0.3) as fetcher:
        started = asyncio.get_running_loop().time()
        with pytest.raises(FetchFailed, match=r"timed out after 0\.3 s"):
            await fetcher.fetch(image_server.url(path))

    assert asyncio.get_running_loop().time() - started < 2


async def test_without_trust_the_listener_is_refused_and_never_contacted(
    image_server: ImageServer, resolver: MapResolver, loopback_transport: LoopbackOnlyTransport
) -> None:
    async with GuardedFetcher(resolver=resolver, transport=loopback_transport) as fetcher:
        with pytest.raises(UrlRefused, match=r"images\.example resolves to a loopback address"):
            await fetcher.fetch(image_server.url("/cat.png"))

    assert loopback_transport.sent == []
    assert image_server.paths == []


async def test_https_verifies_the_host_name_while_connecting_to_the_checked_ip(
    tls_image_server: ImageServer, tls_setup: TlsSetup, resolver: MapResolver
) -> None:
    transport = LoopbackOnlyTransport(httpx.AsyncHTTPTransport(verify=tls_setup.client_context))
    async with trusting_images_example(resolver, transport) as fetcher:
        fetched = await fetcher.fetch(tls_image_server.url("/cat.png", scheme="https"))

    assert fetched.data == PNG
    assert [request.url.host for request in transport.sent] == ["127.0.0.1"]
    assert tls_setup.sni_names == ["images.example"]  # the name, not the IP, went out as SNI


async def test_https_refuses_a_certificate_for_another_name(
    tls_image_server: ImageServer, tls_setup: TlsSetup
) -> None:
    # The certificate says images.example; pinning the IP must not weaken verification.
    resolver = MapResolver({"other.example": ["127.0.0.1"]})
    transport = LoopbackOnlyTransport(httpx.AsyncHTTPTransport(verify=tls_setup.client_context))
    async with GuardedFetcher(
        resolver=resolver, allow_private_hosts=frozenset({"other.example"}), transport=transport
    ) as fetcher:
        with pytest.raises(FetchFailed, match="CERTIFICATE_VERIFY_FAILED") as failed:
            await fetcher.fetch(
                tls_image_server.url("/cat.png", host="other.example", scheme="https")
            )

    assert "Hostname mismatch" in failed.value.reason
    assert tls_image_server.paths == []


# --- DNS rebinding: the connection goes to the address that was checked ------------------


class RebindingResolver:
    """Public on the first lookup, loopback afterwards: a DNS-rebinding attacker."""

    def __init__(self) -> None:
        self.lookups = 0

    async def __call__(self, host: str, port: int, /) -> list[str]:
        self.lookups += 1
        return [PUBLIC_V4] if self.lookups == 1 else ["127.0.0.1"]


def recording_transport(
    sent: list[httpx.Request], respond: Callable[[httpx.Request], httpx.Response]
) -> httpx.MockTransport:
    """Records where each request would connect and answers without any network."""

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return respond(request)

    return httpx.MockTransport(handler)


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_fetch_connects_to_the_checked_address_not_a_fresh_lookup(scheme: str) -> None:
    sent: list[httpx.Request] = []
    png = httpx.Response(200, headers={"Content-Type": "image/png"}, content=PNG)
    transport = recording_transport(sent, lambda _: png)
    resolver = RebindingResolver()

    async with GuardedFetcher(resolver=resolver, transport=transport) as fetcher:
        fetched = await fetcher.fetch(f"{scheme}://rebind.example/cat.png")

    assert fetched.data == PNG
    assert fetched.final_url == f"{scheme}://rebind.example/cat.png"
    assert resolver.lookups == 1
    [request] = sent
    assert request.url.host == PUBLIC_V4
    assert request.url.scheme == scheme
    assert request.headers["Host"] == "rebind.example"
    if scheme == "https":
        # TLS SNI and certificate checks use the name, while the socket goes to the IP.
        assert request.extensions["sni_hostname"] == "rebind.example"
    else:
        assert "sni_hostname" not in request.extensions


async def test_a_redirect_that_rebinds_to_loopback_is_refused() -> None:
    sent: list[httpx.Request] = []
    redirect = httpx.Response(302, headers={"Location": "/second"})
    transport = recording_transport(sent, lambda _: redirect)
    resolver = RebindingResolver()

    async with GuardedFetcher(resolver=resolver, transport=transport) as fetcher:
        with pytest.raises(UrlRefused, match=r"rebind\.example resolves to a loopback address"):
            await fetcher.fetch("https://rebind.example/first")

    assert [request.url.host for request in sent] == [PUBLIC_V4]
    assert resolver.lookups == 2


async def test_the_next_checked_address_is_tried_when_connecting_fails() -> None:
    sent: list[httpx.Request] = []

    def respond(request: httpx.Request) -> httpx.Response:
        if request.url.host == PUBLIC_V4:
            raise httpx.ConnectError("unreachable", request=request)
        return httpx.Response(200, headers={"Content-Type": "image/webp"}, content=b"RIFF")

    resolver = MapResolver({"dual.example": [PUBLIC_V4, PUBLIC_V6]})
    transport = recording_transport(sent, respond)
    async with GuardedFetcher(resolver=resolver, transport=transport) as fetcher:
        fetched = await fetcher.fetch("http://dual.example:8080/a.webp")

    assert fetched.content_type == "image/webp"
    assert [str(request.url) for request in sent] == [
        f"http://{PUBLIC_V4}:8080/a.webp",
        f"http://[{PUBLIC_V6}]:8080/a.webp",
    ]
    assert {request.headers["Host"] for request in sent} == {"dual.example:8080"}


async def test_compressed_bodies_are_refused() -> None:
    gzip = httpx.Response(
        200, headers={"Content-Type": "image/png", "Content-Encoding": "gzip"}, content=b"x"
    )
    resolver = MapResolver({"public.example": [PUBLIC_V4]})
    async with GuardedFetcher(
        resolver=resolver, transport=recording_transport([], lambda _: gzip)
    ) as fetcher:
        with pytest.raises(FetchFailed, match="content encoding 'gzip'"):
            await fetcher.fetch("http://public.example/a.png")
