"""The egress guard: fetching and calling client-supplied URLs (reference images, webhook
targets) without becoming an SSRF proxy.

A client may only make Vivix fetch from publicly routable addresses. `check_url` parses the
URL, resolves every address of its host and refuses the URL when any one of them is not
globally routable (loopback, private, link-local incl. cloud metadata, CGNAT, unique-local,
multicast, reserved, documentation, and IPv6 forms that embed such an IPv4 address).

`GuardedFetcher.fetch` connects to an address that `check_url` approved and never resolves
the host name again: the request goes to `http(s)://<checked IP>:<port>/…` with the
original `Host` header and, for https, the original name as TLS SNI and certificate name
(httpcore's `sni_hostname` request extension). A DNS answer that changes between the check
and the connection (DNS rebinding) therefore cannot redirect the request. Redirects are
followed by hand and every hop is checked the same way.

Policy notes for operators:
- Any port 1..65535 is allowed: the address check is the boundary, and a public host is
  reachable on every port from the internet anyway.
- `allow_private_hosts` names hosts the operator trusts to resolve to non-public addresses
  (e.g. an internal asset server). It skips only the address check for those names (and
  literal IPs written there); scheme, credential and redirect rules still apply, and the
  connection is still pinned to the resolved address.
- Pass a custom `Resolver` to pin names to addresses (an allowlist) or to use another DNS.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_ALLOWED_CONTENT_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif")
_MAX_URL_LENGTH = 8192
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_HOST_NAME = re.compile(r"^(?=.{1,253}\.?$)[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*\.?$")


class UrlRefused(Exception):
    """The URL is not allowed by the fetch policy; `reason` is safe to show the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FetchFailed(Exception):
    """The URL was allowed but fetching it failed (timeout, HTTP error, too large, wrong
    content type); `reason` is safe to show the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Resolver(Protocol):
    """Resolves a host name to all of its addresses (IPv4 and IPv6, as strings).

    `host` is the URL's host in lower-case ASCII (IDNA), trailing dot kept if written.

    Return an empty list (or raise OSError) when the name does not resolve. Every returned
    address is checked; one non-public address refuses the whole URL.
    """

    async def __call__(self, host: str, port: int, /) -> list[str]: ...


async def resolve_with_system_dns(host: str, port: int, /) -> list[str]:
    """The default resolver: the system's getaddrinfo, all families."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [
        str(sockaddr[0])
        for family, _type, _proto, _canonname, sockaddr in infos
        if family in (socket.AF_INET, socket.AF_INET6)
    ]


@dataclass(frozen=True, slots=True)
class FetchedFile:
    url: str  # as the client gave it
    final_url: str  # after redirects, with the host name (not the connected IP)
    data: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class _CheckedUrl:
    url: httpx.URL
    host: str  # ASCII (IDNA) host as written, without brackets
    is_ip_literal: bool
    addresses: list[IPAddress]  # what to connect to, in resolver order


async def check_url(
    url: str,
    resolver: Resolver | None = None,
    *,
    allow_private_hosts: frozenset[str] = frozenset(),
) -> list[IPAddress]:
    """Return the addresses `url` may be fetched from, or raise UrlRefused.

    Literal IPs in any form a browser or getaddrinfo accepts (`2130706433`, `0x7f.1`,
    `[::ffff:127.0.0.1]`) are normalized first; IPv4-mapped IPv6 addresses come back as
    IPv4. Hosts in `allow_private_hosts` (names or literal IPs) skip the address check.
    """
    trusted = frozenset(normalize_host_name(host) for host in allow_private_hosts)
    checked = await _check(url, resolver or resolve_with_system_dns, trusted)
    return checked.addresses


def normalize_host_name(host: str) -> str:
    """The form `allow_private_hosts` entries are compared in: lower-case ASCII (IDNA),
    no trailing dot; literal IPs in their canonical form."""
    host = host.strip()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    try:
        raw_host = httpx.URL(f"http://{host}/").raw_host.decode("ascii")
    except httpx.InvalidURL as exc:
        raise ValueError(f"not a host name: {host!r}") from exc
    literal = _parse_ip_literal(raw_host)
    return str(literal) if literal is not None else raw_host.lower().rstrip(".")


async def _check(url: str, resolver: Resolver, allow_private_hosts: frozenset[str]) -> _CheckedUrl:
    """check_url with `allow_private_hosts` already normalized."""
    if len(url) > _MAX_URL_LENGTH:
        raise UrlRefused(f"URL is longer than {_MAX_URL_LENGTH} characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise UrlRefused("not a valid URL") from None
    if parsed.scheme not in ("http", "https"):
        raise UrlRefused(f"scheme {parsed.scheme or '(none)'!r} is not allowed; use http or https")
    host = parsed.raw_host.decode("ascii")
    if not host:
        raise UrlRefused("URL has no host")
    if parsed.userinfo:
        raise UrlRefused("URL must not contain credentials")
    port = parsed.port if parsed.port is not None else (443 if parsed.scheme == "https" else 80)
    if not 1 <= port <= 65535:
        raise UrlRefused(f"port {port} is out of range")

    try:
        literal = _parse_ip_literal(host)
    except ValueError:
        raise UrlRefused(f"host {host!r} is not a valid IP address") from None
    if literal is not None:
        trusted = str(literal) in allow_private_hosts
        addresses = [literal]
    else:
        if not _HOST_NAME.match(host.lower()):
            raise UrlRefused(f"host {host!r} is not a valid host name")
        trusted = host.lower().rstrip(".") in allow_private_hosts
        addresses = await _resolve(resolver, host, port)

    if not trusted:
        for address in addresses:
            problem = _describe_non_public(address)
            if problem is None:
                continue
            if literal is not None:
                description, shown = problem
                # "10.1.2.3 is a private address", not "… (10.1.2.3)" again.
                written_plainly = shown is not None and str(shown) == host
                raise UrlRefused(
                    f"{host} is {description if written_plainly else _phrase(problem)}"
                )
            raise UrlRefused(f"{host} resolves to {_phrase(problem)}")

    connect_to: list[IPAddress] = []
    for address in addresses:
        # Connect to the IPv4 form of a mapped address: it is the same destination and
        # works on hosts without IPv6.
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        target = mapped if mapped is not None else address
        if target not in connect_to:
            connect_to.append(target)
    return _CheckedUrl(
        url=parsed, host=host, is_ip_literal=literal is not None, addresses=connect_to
    )


async def _resolve(resolver: Resolver, host: str, port: int) -> list[IPAddress]:
    try:
        answers = await resolver(host, port)
    except OSError:  # socket.gaierror and friends
        answers = []
    if not answers:
        raise UrlRefused(f"{host} does not resolve")
    addresses: list[IPAddress] = []
    for answer in answers:
        try:
            addresses.append(ipaddress.ip_address(answer))
        except ValueError:
            raise UrlRefused(f"{host} resolves to an invalid address ({answer!r})") from None
    return addresses


# --- literal IP parsing -------------------------------------------------------------------


def _parse_ip_literal(host: str) -> IPAddress | None:
    """The address a literal host denotes, None for a host name; ValueError for a host that
    looks numeric but is not a valid address (browsers refuse those too)."""
    if ":" in host:  # httpx strips the brackets of an IPv6 literal
        return ipaddress.IPv6Address(host.replace("%25", "%"))
    return _parse_ipv4_any_form(host)


def _parse_ipv4_any_form(host: str) -> ipaddress.IPv4Address | None:
    """WHATWG URL IPv4 parsing: 1-4 dot-separated decimal, octal (leading 0) or hex (0x)
    parts, the last filling the remaining bytes: `127.1`, `2130706433`, `0x7f.0.0.1`."""
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    if not _looks_numeric(parts[-1]):
        return None
    if len(parts) > 4:
        raise ValueError(host)
    numbers = [_parse_ipv4_part(part) for part in parts]
    if any(number > 255 for number in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise ValueError(host)
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value += number * 256 ** (3 - index)
    return ipaddress.IPv4Address(value)


def _looks_numeric(part: str) -> bool:
    if part.isascii() and part.isdigit():
        return True
    return part[:2].lower() == "0x" and all(c in "0123456789abcdefABCDEF" for c in part[2:])


def _parse_ipv4_part(part: str) -> int:
    if not part:
        raise ValueError(part)
    if part[:2].lower() == "0x":
        return int(part[2:], 16) if part[2:] else 0
    if len(part) > 1 and part.startswith("0"):
        return int(part[1:], 8)
    if not (part.isascii() and part.isdigit()):
        raise ValueError(part)
    return int(part)


# --- address policy -----------------------------------------------------------------------

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# Most specific first; the first match names the refusal.
_NON_PUBLIC_V4: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (_V4("169.254.169.254/32"), "the link-local cloud metadata address"),
    (_V4("0.0.0.0/8"), "an unspecified ('this network') address"),
    (_V4("127.0.0.0/8"), "a loopback address"),
    (_V4("10.0.0.0/8"), "a private address"),
    (_V4("172.16.0.0/12"), "a private address"),
    (_V4("192.168.0.0/16"), "a private address"),
    (_V4("100.64.0.0/10"), "a carrier-grade NAT (shared) address"),
    (_V4("169.254.0.0/16"), "a link-local address"),
    (_V4("192.0.0.0/24"), "a reserved (IETF protocol assignment) address"),
    (_V4("192.0.2.0/24"), "a documentation address"),
    (_V4("198.51.100.0/24"), "a documentation address"),
    (_V4("203.0.113.0/24"), "a documentation address"),
    (_V4("192.88.99.0/24"), "a reserved (6to4 relay) address"),
    (_V4("198.18.0.0/15"), "a benchmarking address"),
    (_V4("224.0.0.0/4"), "a multicast address"),
    (_V4("255.255.255.255/32"), "the broadcast address"),
    (_V4("240.0.0.0/4"), "a reserved address"),
)

_NAT64 = _V6("64:ff9b::/96")
_IPV4_COMPATIBLE = _V6("::/96")
_GLOBAL_UNICAST = _V6("2000::/3")
_NON_PUBLIC_V6: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_V6("::/128"), "an unspecified address"),
    (_V6("::1/128"), "a loopback address"),
    (_V6("fc00::/7"), "a unique-local (private) address"),
    (_V6("fe80::/10"), "a link-local address"),
    (_V6("fec0::/10"), "a site-local address"),
    (_V6("ff00::/8"), "a multicast address"),
    (_V6("64:ff9b:1::/48"), "a local-use NAT64 address"),
    (_V6("100::/64"), "a discard-only address"),
    (_V6("2001:db8::/32"), "a documentation address"),
    (_V6("3fff::/20"), "a documentation address"),
    (_V6("2001::/23"), "a reserved (IETF protocol assignment) address"),
    (_V6("5f00::/16"), "a reserved (SRv6) address"),
)


def _describe_non_public(address: IPAddress) -> tuple[str, IPAddress | None] | None:
    """Why `address` must not be fetched from, or None when it is public: a description
    ('a private address') and the address to show after it (None when the description
    already names the address that matters)."""
    if isinstance(address, ipaddress.IPv4Address):
        return _describe_non_public_v4(address)
    if address.scope_id:
        address = ipaddress.IPv6Address(str(address).split("%", 1)[0])

    # IPv6 forms that carry an IPv4 address: judge the IPv4 address they lead to.
    mapped = address.ipv4_mapped
    if mapped is not None:
        inner = _describe_non_public_v4(mapped)
        return None if inner is None else (f"an IPv4-mapped form of {_phrase(inner)}", None)
    if address in _NAT64:
        inner = _describe_non_public_v4(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        return None if inner is None else (f"a NAT64 address embedding {_phrase(inner)}", None)
    # 6to4, Teredo and IPv4-compatible addresses are deprecated tunnels: always refused,
    # naming the embedded address when that one is non-public itself.
    tunnel: tuple[str, ipaddress.IPv4Address] | None = None
    if address.sixtofour is not None:
        tunnel = ("a 6to4 tunnel address", address.sixtofour)
    elif address.teredo is not None:
        tunnel = ("a Teredo tunnel address", address.teredo[1])
    elif address in _IPV4_COMPATIBLE and int(address) > 1:
        tunnel = ("an IPv4-compatible address", ipaddress.IPv4Address(int(address)))
    if tunnel is not None:
        description, embedded = tunnel
        inner = _describe_non_public_v4(embedded)
        if inner is None:
            return description, address
        return f"{description} embedding {_phrase(inner)}", None

    for network, description in _NON_PUBLIC_V6:
        if address in network:
            return description, address
    if address not in _GLOBAL_UNICAST or not address.is_global:
        return "a non-public address", address
    return None


def _describe_non_public_v4(address: ipaddress.IPv4Address) -> tuple[str, IPAddress] | None:
    for network, description in _NON_PUBLIC_V4:
        if address in network:
            return description, address
    if not address.is_global:
        return "a non-public address", address
    return None


def _phrase(description: tuple[str, IPAddress | None]) -> str:
    text, address = description
    return text if address is None else f"{text} ({address})"


# --- fetching -----------------------------------------------------------------------------


class GuardedFetcher:
    """Fetches client-supplied image URLs under the policy of `check_url`.

    `timeout_s` bounds the whole fetch (resolution, connection, every redirect and the
    body), so a server trickling bytes cannot hold a worker. The fetcher owns `transport`
    (closed by `aclose`); the default is an httpx transport without keep-alive, so a
    connection opened for one host name is never reused for another name on the same IP.
    Safe for concurrent use.
    """

    def __init__(
        self,
        *,
        resolver: Resolver | None = None,
        max_bytes: int = 20 * 1024 * 1024,
        timeout_s: float = 10.0,
        max_redirects: int = 3,
        allowed_content_types: tuple[str, ...] = DEFAULT_ALLOWED_CONTENT_TYPES,
        allow_private_hosts: frozenset[str] = frozenset(),
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._resolver: Resolver = resolver or resolve_with_system_dns
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s
        self._max_redirects = max_redirects
        self._allowed_content_types = tuple(t.lower() for t in allowed_content_types)
        self._allow_private_hosts = frozenset(normalize_host_name(h) for h in allow_private_hosts)
        # Used directly, not through httpx.AsyncClient: no environment proxies, no .netrc
        # credentials, no cookie jar shared between tenants, no automatic redirects.
        self._transport = transport or httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_keepalive_connections=0), retries=0
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def fetch(self, url: str) -> FetchedFile:
        """Download `url`; UrlRefused when it (or a redirect) is not allowed, FetchFailed
        for everything else that goes wrong."""
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._fetch_following_redirects(url)
        except TimeoutError:
            raise FetchFailed(f"timed out after {self._timeout_s:g} s") from None

    async def _fetch_following_redirects(self, url: str) -> FetchedFile:
        target = await _check(url, self._resolver, self._allow_private_hosts)
        redirects = 0
        while True:
            response = await self._send_to_checked_address(target)
            try:
                location = response.headers.get("location")
                if response.status_code not in _REDIRECT_STATUSES or location is None:
                    data, content_type = await self._read_image(response)
                    return FetchedFile(
                        url=url, final_url=str(target.url), data=data, content_type=content_type
                    )
            finally:
                await response.aclose()

            redirects += 1
            if redirects > self._max_redirects:
                raise FetchFailed(f"more than {self._max_redirects} redirects")
            try:
                next_url = str(target.url.join(location))
            except httpx.InvalidURL:
                raise UrlRefused(f"redirect to an invalid URL ({location!r})") from None
            try:
                target = await _check(next_url, self._resolver, self._allow_private_hosts)
            except UrlRefused as exc:
                raise UrlRefused(f"redirect to {next_url} refused: {exc.reason}") from None

    async def _send_to_checked_address(self, target: _CheckedUrl) -> httpx.Response:
        """Send the GET to the checked addresses in turn (the next one only when connecting
        fails), never to a fresh resolution of the host name."""
        failure: httpx.ConnectError | None = None
        for address in target.addresses:
            request = self._build_pinned_request(target, address)
            try:
                response = await self._transport.handle_async_request(request)
            except httpx.ConnectError as exc:
                failure = exc
                continue
            except httpx.TimeoutException:
                raise FetchFailed(f"timed out after {self._timeout_s:g} s") from None
            except httpx.TransportError as exc:
                raise FetchFailed(f"request to {target.host} failed: {exc}") from None
            response.request = request
            return response
        raise FetchFailed(f"could not connect to {target.host}: {failure}")

    def _build_pinned_request(self, target: _CheckedUrl, address: IPAddress) -> httpx.Request:
        pinned = _pin(target, address)
        extensions = {**pinned.extensions, "timeout": httpx.Timeout(self._timeout_s).as_dict()}
        headers = {
            **pinned.headers,
            "Accept": ", ".join(self._allowed_content_types),
            # Only the bytes on the wire count against max_bytes: no decompression bombs.
            "Accept-Encoding": "identity",
            "User-Agent": "Vivix reference-image fetcher",
            # One connection per request, bound to the name it was opened for.
            "Connection": "close",
        }
        return httpx.Request("GET", pinned.url, headers=headers, extensions=extensions)

    async def _read_image(self, response: httpx.Response) -> tuple[bytes, str]:
        if not 200 <= response.status_code < 300:
            raise FetchFailed(f"the server answered HTTP {response.status_code}")
        content_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type not in self._allowed_content_types:
            raise FetchFailed(
                f"content type {content_type or '(none)'!r} is not one of "
                + ", ".join(self._allowed_content_types)
            )
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise FetchFailed(f"content encoding {encoding!r} is not supported")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise FetchFailed(f"larger than {self._max_bytes} bytes ({declared} declared)")

        body = bytearray()
        try:
            # aiter_bytes, not aiter_raw: it also serves a body the transport already read
            # (httpx.MockTransport); with identity encoding the bytes are the same.
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self._max_bytes:
                    # The caller closes the response unread, which drops the connection.
                    raise FetchFailed(f"larger than {self._max_bytes} bytes")
        except httpx.TimeoutException:
            raise FetchFailed(f"timed out after {self._timeout_s:g} s") from None
        except httpx.TransportError as exc:
            raise FetchFailed(f"reading the response failed: {exc}") from None
        if not body:
            raise FetchFailed("the response body is empty")
        return bytes(body), content_type


# --- other outbound fetches -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PinnedRequest:
    """Where to send a request for a checked URL: to the checked address, never to a new
    resolution of its name; `headers` and `extensions` carry the name (Host, TLS SNI)."""

    url: str
    headers: dict[str, str]
    extensions: dict[str, object]


def _pin(target: _CheckedUrl, address: IPAddress) -> PinnedRequest:
    url = target.url.copy_with(host=str(address), fragment=None)
    extensions: dict[str, object] = {}
    if target.url.scheme == "https" and not target.is_ip_literal:
        # TLS SNI and certificate verification use the name, not the IP we connect to.
        extensions["sni_hostname"] = target.host.rstrip(".")
    headers = {
        "Host": target.url.netloc.decode("ascii"),
        # One connection per request, bound to the name it was opened for.
        "Connection": "close",
    }
    return PinnedRequest(str(url), headers, extensions)


class EgressGuard:
    """The policy of `check_url` for fetches other than reference images (provider output
    files hosted off the provider's own origin, and every redirect hop): `pin` refuses a
    URL leading to a non-public address (UrlRefused) and otherwise says where to send
    the request so that DNS can't change the answer afterwards."""

    def __init__(
        self, resolver: Resolver | None = None, allow_private_hosts: frozenset[str] = frozenset()
    ) -> None:
        self._resolver: Resolver = resolver or resolve_with_system_dns
        self._allow_private_hosts = frozenset(normalize_host_name(h) for h in allow_private_hosts)

    async def pin(self, url: str) -> PinnedRequest:
        target = await _check(url, self._resolver, self._allow_private_hosts)
        return _pin(target, target.addresses[0])
