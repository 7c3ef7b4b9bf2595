"""The SSRF guard for URLs that reach pollhook through its API, not its config file.

Whoever holds a `subscribe` token chooses where pollhook sends requests, so
every address such a URL leads to must be allowed by `allow_networks`
(default: public addresses only). It is checked twice:

- at registration, `check_url` resolves the host and refuses the URL when any
  address is not allowed, with a reason the client can read;
- at every connection, `guarded_session` sends through a `GuardedConnector`:
  its resolver drops every address that is not allowed (a name that resolved
  to a public address at registration and resolves to 127.0.0.1 now is
  refused now, and nothing is sent), and its `connect` checks IP-literal hosts,
  which aiohttp connects to without asking any resolver.

IPv4 written any other way than four decimal numbers (`2130706433`,
`0177.0.0.1`, `0x7f.1`, `127.1`) is refused outright: C's `inet_aton` and so
`getaddrinfo` read those as 127.0.0.1, and older aiohttp connects to them as
given. IPv6 forms that carry an IPv4 address (`::ffff:127.0.0.1`, 6to4
`2002::/16`, NAT64 `64:ff9b::/96`) are judged by that IPv4 address too.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from yarl import URL

from pollhook.errors import ConfigError, RefusedURLError

if TYPE_CHECKING:  # a TypedDict of aiohttp 3.10 and later; plain dicts before
    from aiohttp.abc import ResolveResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH = 2048  # what browsers and most servers accept; longer is a mistake or a probe
PUBLIC = "public"  # the `allow_networks` entry meaning "every globally routable address"

_net = ipaddress.ip_network

# Never a destination, whatever allow_networks says: 0.0.0.0 reaches this host on
# Linux, and multicast or broadcast is never a TCP peer.
_NEVER: tuple[tuple[IPNetwork, str], ...] = (
    (_net("0.0.0.0/8"), "'this network' (0.0.0.0/8), which reaches this host"),
    (_net("224.0.0.0/4"), "multicast"),
    (_net("255.255.255.255/32"), "broadcast"),
    (_net("::/128"), "unspecified, which reaches this host"),
    (_net("ff00::/8"), "multicast"),
)

# Not public: IANA's special-purpose registries (RFC 6890 and successors).
_SPECIAL: tuple[tuple[IPNetwork, str], ...] = (
    (_net("10.0.0.0/8"), "private"),
    (_net("100.64.0.0/10"), "shared address space (CGNAT)"),
    (_net("127.0.0.0/8"), "loopback"),
    (_net("169.254.0.0/16"), "link-local (cloud metadata lives here)"),
    (_net("172.16.0.0/12"), "private"),
    (_net("192.0.0.0/24"), "IETF protocol assignments"),
    (_net("192.0.2.0/24"), "documentation"),
    (_net("192.88.99.0/24"), "6to4 relay anycast"),
    (_net("192.168.0.0/16"), "private"),
    (_net("198.18.0.0/15"), "benchmarking"),
    (_net("198.51.100.0/24"), "documentation"),
    (_net("203.0.113.0/24"), "documentation"),
    (_net("240.0.0.0/4"), "reserved"),
    (_net("::1/128"), "loopback"),
    (_net("64:ff9b:1::/48"), "local-use NAT64"),
    (_net("100::/64"), "discard-only"),
    (_net("2001::/23"), "IETF protocol assignments (Teredo, benchmarking, ORCHID)"),
    (_net("2001:db8::/32"), "documentation"),
    (_net("3fff::/20"), "documentation"),
    (_net("5f00::/16"), "segment routing (SRv6)"),
    (_net("fc00::/7"), "unique local (ULA)"),
    (_net("fe80::/10"), "link-local"),
    (_net("fec0::/10"), "site-local"),
)
_GLOBAL_UNICAST = _net("2000::/3")
_NAT64 = _net("64:ff9b::/96")


@dataclass(frozen=True)
class NetworkPolicy:
    """Which addresses API-registered URLs may reach: listed networks, and public ones if asked."""

    networks: tuple[IPNetwork, ...] = ()
    public: bool = True

    @classmethod
    def from_config(cls, entries: Sequence[str] | None) -> NetworkPolicy:
        """`allow_networks:` as written: CIDRs and the word `public`; absent means `[public]`.

        Raises ConfigError naming the entry; the config loader adds file and line.
        """
        if entries is None:
            return cls()
        networks: list[IPNetwork] = []
        for entry in entries:
            if entry.strip().lower() == PUBLIC:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=True))
            except ValueError as exc:
                raise ConfigError(
                    f"allow_networks: {entry!r} is not a network in CIDR form"
                    f" (e.g. 10.0.0.0/8) nor 'public': {exc}"
                ) from None
        return cls(tuple(networks), any(e.strip().lower() == PUBLIC for e in entries))

    def refusal(self, address: IPAddress) -> str | None:
        """None when `address` may be reached, else what it is, for the error message."""
        for network, label in _NEVER:
            if address in network:
                return label
        if isinstance(address, ipaddress.IPv6Address):
            embedded = _embedded_ipv4(address)
            if embedded is not None:
                form, inner = embedded
                why = self.refusal(inner)
                if why is not None:
                    return f"{form} {inner}: {why}"
                if form == _MAPPED:  # the kernel connects to the IPv4 address itself
                    return None
        if any(address in network for network in self.networks):
            return None
        if not self.public:
            return "outside allow_networks"
        kind = _special(address)
        return None if kind is None else f"{kind}, outside allow_networks"


_MAPPED = "IPv4-mapped"


def _embedded_ipv4(
    address: ipaddress.IPv6Address,
) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 one leads to, and how: IPv4-mapped, 6to4 or NAT64."""
    if address.ipv4_mapped is not None:
        return _MAPPED, address.ipv4_mapped
    if address.sixtofour is not None:
        return "6to4 for", address.sixtofour
    if address in _NAT64:
        return "NAT64 for", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _special(address: IPAddress) -> str | None:
    for network, label in _SPECIAL:
        if address in network:
            return label
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64 or address.sixtofour is not None:
            return None  # public when the IPv4 address it carries is (checked by the caller)
        if address not in _GLOBAL_UNICAST:
            return "reserved (not IPv6 global unicast)"
    return None


# -- hosts -------------------------------------------------------------------------

_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
_NUMBER = re.compile(r"[0-9]+|0x[0-9a-f]*")


def literal_address(host: str) -> IPAddress | None:
    """The address an IP-literal host names, or None for a host name.

    Raises RefusedURLError for IPv4 spelt other than as four decimal numbers,
    and for hosts that are not valid names. The rule for telling a number from
    a name is the WHATWG URL standard's: a host whose last label is a number
    is an IPv4 address.
    """
    bare = host.lower()
    if ":" in bare:  # yarl gives IPv6 literals without brackets, zone as %25 or %
        try:
            return ipaddress.IPv6Address(bare.split("%", 1)[0])
        except ValueError:
            raise RefusedURLError(host, "not a valid IPv6 address") from None
    name = bare[:-1] if bare.endswith(".") else bare
    labels = name.split(".")
    if _NUMBER.fullmatch(labels[-1]):
        try:
            return ipaddress.IPv4Address(name)
        except ValueError:
            raise RefusedURLError(
                host, "an IPv4 address must be written as four decimal numbers (a.b.c.d)"
            ) from None
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise RefusedURLError(host, "not a valid host name")
    return None


def check_address(
    host: str, address: IPAddress, policy: NetworkPolicy, *, resolved: bool = False
) -> None:
    """Raise RefusedURLError when `policy` refuses `address`, the literal `host` or,
    when `resolved`, one of its DNS answers."""
    why = policy.refusal(address)
    if why is None:
        return
    if resolved:
        raise RefusedURLError(host, f"it resolves to {address}, {why}")
    raise RefusedURLError(host, f"the address is {why}")


def answer_address(answer: ResolveResult) -> IPAddress:
    """The address of one resolver answer, without an IPv6 zone (`fe80::1%eth0`)."""
    return ipaddress.ip_address(answer["host"].split("%", 1)[0])


def check_form(url: str) -> URL:
    """The URL parsed, if its form is acceptable: length, http(s), a host, no userinfo."""
    if len(url) > MAX_URL_LENGTH:
        raise RefusedURLError(_host_of(url), f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        raise RefusedURLError(_host_of(url), "not a valid URL") from None
    host = parsed.raw_host or ""
    if parsed.scheme not in ("http", "https"):
        raise RefusedURLError(host, f"scheme {parsed.scheme!r} is not allowed; use http or https")
    if not host or not parsed.is_absolute():
        raise RefusedURLError(host, "the URL has no host")
    if "@" in _authority(url):  # yarl drops an empty one (`http://@host/`): look at the text
        raise RefusedURLError(host, "a user name or password in the URL is not allowed")
    return parsed


def _authority(url: str) -> str:
    """The text between `//` and the path, query or fragment."""
    return re.split(r"[/?#]", url.split("://", 1)[-1], maxsplit=1)[0]


def _host_of(url: str) -> str:
    """The host of a URL that did not parse, for the message: best effort, never the query."""
    return _authority(url).rsplit("@", 1)[-1][:100]


async def check_url(
    url: str, policy: NetworkPolicy, resolver: AbstractResolver | None = None
) -> URL:
    """Registration: the parsed URL if its form is fine and every address it resolves to
    is allowed; else RefusedURLError with a one-line reason naming the host.

    `resolver` (default: aiohttp's threaded getaddrinfo) is asked for every
    address family; an unresolvable host is refused too.
    """
    parsed = check_form(url)
    host = parsed.raw_host or ""
    address = literal_address(host)
    if address is not None:
        check_address(host, address, policy)
        return parsed
    own = resolver is None
    lookup = resolver or aiohttp.ThreadedResolver()
    try:
        answers = await lookup.resolve(host, parsed.port or 0, family=socket.AF_UNSPEC)
    except OSError as exc:
        raise RefusedURLError(host, f"the host does not resolve ({exc.strerror or exc})") from None
    finally:
        if own:
            await lookup.close()
    if not answers:
        raise RefusedURLError(host, "the host does not resolve")
    for answer in answers:
        check_address(host, answer_address(answer), policy, resolved=True)
    return parsed


# -- at every connection -----------------------------------------------------------


class GuardedResolver(AbstractResolver):
    """Wraps a resolver; keeps only the addresses `policy` allows, refuses if none is left."""

    def __init__(self, policy: NetworkPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner or aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = literal_address(host)
        if address is not None:  # aiohttp never asks for these; other callers might
            check_address(host, address, self.policy)
        allowed: list[ResolveResult] = []
        refused: RefusedURLError | None = None
        for answer in await self.inner.resolve(host, port, family):
            try:
                check_address(host, answer_address(answer), self.policy, resolved=True)
            except RefusedURLError as exc:
                refused = refused or exc
            else:
                allowed.append(answer)
        if not allowed:
            raise refused or RefusedURLError(host, "the host does not resolve")
        return allowed

    async def close(self) -> None:
        await self.inner.close()


class GuardedConnector(aiohttp.TCPConnector):
    """A TCPConnector that refuses every connection `policy` does not allow.

    Host names go through `GuardedResolver`. IP literals never reach a
    resolver: `TCPConnector._resolve_host` returns them as they are (it asks
    the resolver only when `helpers.is_ip_address` says the host is not an IP
    address). They are checked in `connect`, the documented entry of
    `BaseConnector` that every request goes through before a connection is
    taken from the pool or made, including each hop of a redirect; unlike a
    session middleware it cannot be switched off per request, and unlike
    `_resolve_host` it is not private. Requests through a proxy are refused:
    the proxy would resolve the name, out of our sight.
    """

    def __init__(
        self, policy: NetworkPolicy, resolver: AbstractResolver | None = None, **kwargs: Any
    ) -> None:
        # no DNS cache: every new connection asks the resolver, so it sees today's answer
        super().__init__(resolver=GuardedResolver(policy, resolver), use_dns_cache=False, **kwargs)
        self.policy = policy

    async def connect(
        self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> Connection:
        host = req.url.raw_host or ""
        if req.proxy is not None:
            raise RefusedURLError(host, "requests to API-registered URLs never use a proxy")
        address = literal_address(host)
        if address is not None:
            check_address(host, address, self.policy)
        return await super().connect(req, traces, timeout)


def guarded_session(
    policy: NetworkPolicy, resolver: AbstractResolver | None = None, **connector: Any
) -> aiohttp.ClientSession:
    """A session for API-registered URLs only: every connection passes the guard.

    Call it inside the running loop; close it with `await session.close()`.
    Like pollhook's other sessions it keeps no cookies, adds no Content-Type,
    sets no timeout of its own (callers wrap requests in `asyncio.timeout`)
    and never reads proxy settings from the environment. `connector` takes
    TCPConnector options such as `limit`, `keepalive_timeout` or `ssl`.
    Callers still pass `allow_redirects=False`: a redirect is a new request
    that the guard would check, but webhooks and verifications never follow one.
    """
    return aiohttp.ClientSession(
        connector=GuardedConnector(policy, resolver, **connector),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(),
        skip_auto_headers=("content-type",),
        trust_env=False,
    )
