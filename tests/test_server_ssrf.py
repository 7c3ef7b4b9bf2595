"""The SSRF guard for API-registered URLs: at registration and at every connection.

Connections go to real receivers on 127.0.0.1; a receiver that must get
nothing is checked to have got nothing, and a control request through a
policy that allows loopback shows the same request would have arrived.
DNS is the one thing faked: a resolver object whose answers a test flips.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from pollhook.errors import ConfigError, RefusedURLError
from pollhook.server.ssrf import (
    MAX_URL_LENGTH,
    GuardedResolver,
    NetworkPolicy,
    check_url,
    guarded_session,
)

from servers import Receiver

PUBLIC = NetworkPolicy()
LOOPBACK = NetworkPolicy.from_config(["127.0.0.0/8"])


class FakeDNS(AbstractResolver):
    """Answers each lookup with the next list of addresses in `plan` (the last one repeats)."""

    def __init__(self, *plan: list[str]) -> None:
        self.plan = list(plan)
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        addresses = self.plan.pop(0) if len(self.plan) > 1 else self.plan[0]
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            {
                "hostname": host, "host": a, "port": port, "proto": 0,
                "family": socket.AF_INET6 if ":" in a else socket.AF_INET,
                "flags": socket.AI_NUMERICHOST,
            }
            for a in addresses
        ]  # fmt: skip

    async def close(self) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


async def _post(policy: NetworkPolicy, url: str, dns: AbstractResolver | None = None,
                **kwargs: Any) -> int:  # fmt: skip
    async with (
        guarded_session(policy, dns) as session,
        session.post(url, data=b"{}", allow_redirects=False, **kwargs) as response,
    ):
        return response.status


def post(policy: NetworkPolicy, url: str, dns: AbstractResolver | None = None,
         **kwargs: Any) -> int:  # fmt: skip
    return asyncio.run(_post(policy, url, dns, **kwargs))


def refused(url: str, policy: NetworkPolicy = PUBLIC, dns: AbstractResolver | None = None) -> str:
    with pytest.raises(RefusedURLError) as caught:
        asyncio.run(check_url(url, policy, dns))
    return str(caught.value)


# -- registration ------------------------------------------------------------------

# (URL, host the message names, words of the reason): every spelling we know of
REFUSED_AT_REGISTRATION = [
    ("http://127.0.0.1/", "127.0.0.1", "loopback"),
    ("http://127.0.0.1./", "127.0.0.1.", "loopback"),
    ("http://127.255.255.254/", "127.255.255.254", "loopback"),
    ("http://2130706433/", "2130706433", "four decimal numbers"),
    ("http://0177.0.0.1/", "0177.0.0.1", "four decimal numbers"),
    ("http://0x7f.1/", "0x7f.1", "four decimal numbers"),
    ("http://0x7f000001/", "0x7f000001", "four decimal numbers"),
    ("http://127.1/", "127.1", "four decimal numbers"),
    ("http://127.000.000.001/", "127.000.000.001", "four decimal numbers"),
    ("http://0/", "0", "four decimal numbers"),
    ("http://example.123/", "example.123", "four decimal numbers"),
    ("http://１２７.０.０.１/", "127.0.0.1", "loopback"),  # fullwidth digits: IDNA maps them
    ("http://127。0。0。1/", "127.0.0.1", "loopback"),  # ideographic full stops
    ("http://⑯⑨.②⑤④.①⑥⑨.②⑤④/", "169.254.169.254", "link-local"),
    ("http://[::1]/", "::1", "loopback"),
    ("http://[0:0:0:0:0:0:0:1]/", "::1", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "::ffff:7f00:1", "IPv4-mapped 127.0.0.1: loopback"),
    ("http://[::ffff:7f00:1]/", "::ffff:7f00:1", "IPv4-mapped 127.0.0.1: loopback"),
    ("http://[::ffff:169.254.169.254]/", "::ffff:a9fe:a9fe", "IPv4-mapped 169.254.169.254"),
    ("http://[::ffff:10.0.0.1]/", "::ffff:a00:1", "IPv4-mapped 10.0.0.1: private"),
    ("http://[::127.0.0.1]/", "::7f00:1", "reserved"),  # IPv4-compatible (deprecated)
    ("http://[2002:7f00:1::1]/", "2002:7f00:1::1", "6to4 for 127.0.0.1: loopback"),
    ("http://[2002:a9fe:a9fe::]/", "2002:a9fe:a9fe::", "6to4 for 169.254.169.254"),
    ("http://[64:ff9b::7f00:1]/", "64:ff9b::7f00:1", "NAT64 for 127.0.0.1: loopback"),
    ("http://[64:ff9b::a9fe:a9fe]/", "64:ff9b::a9fe:a9fe", "NAT64 for 169.254.169.254"),
    ("http://[64:ff9b:1::1]/", "64:ff9b:1::1", "local-use NAT64"),
    ("http://[2001:0:4136:e378::1]/", "2001:0:4136:e378::1", "Teredo"),
    ("http://[fe80::1]/", "fe80::1", "link-local"),
    ("http://[fe80::1%25eth0]/", "fe80::1%25eth0", "link-local"),
    ("http://[fec0::1]/", "fec0::1", "site-local"),
    ("http://[fd00:ec2::254]/", "fd00:ec2::254", "unique local"),  # AWS metadata over IPv6
    ("http://[fc00::1]/", "fc00::1", "unique local"),
    ("http://[ff02::1]/", "ff02::1", "multicast"),
    ("http://[::]/", "::", "unspecified"),
    ("http://[100::1]/", "100::1", "discard-only"),
    ("http://[2001:db8::1]/", "2001:db8::1", "documentation"),
    ("http://[3fff::1]/", "3fff::1", "documentation"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254", "link-local"),
    ("http://169.254.170.2/", "169.254.170.2", "link-local"),
    ("http://10.0.0.1/", "10.0.0.1", "private"),
    ("http://172.16.0.1/", "172.16.0.1", "private"),
    ("http://172.31.255.255/", "172.31.255.255", "private"),
    ("http://192.168.1.1/", "192.168.1.1", "private"),
    ("http://100.64.0.1/", "100.64.0.1", "CGNAT"),
    ("http://100.127.255.254/", "100.127.255.254", "CGNAT"),
    ("http://0.0.0.0/", "0.0.0.0", "reaches this host"),
    ("http://0.1.2.3/", "0.1.2.3", "this network"),
    ("http://192.0.0.170/", "192.0.0.170", "IETF protocol assignments"),
    ("http://192.0.2.1/", "192.0.2.1", "documentation"),
    ("http://198.51.100.7/", "198.51.100.7", "documentation"),
    ("http://203.0.113.9/", "203.0.113.9", "documentation"),
    ("http://198.18.0.1/", "198.18.0.1", "benchmarking"),
    ("http://192.88.99.1/", "192.88.99.1", "6to4 relay"),
    ("http://224.0.0.1/", "224.0.0.1", "multicast"),
    ("http://240.0.0.1/", "240.0.0.1", "reserved"),
    ("http://255.255.255.255/", "255.255.255.255", "broadcast"),
    ("http://localhost/", "localhost", "resolves to"),  # the machine's own resolver
    ("http://a b/", "a b", "not a valid host name"),
    ("http://%31%32%37.0.0.1/", "%31%32%37.0.0.1", "four decimal numbers"),
    ("http://ex%61mple.com/", "ex%61mple.com", "not a valid host name"),
    ("http://exa_mple-.com/", "exa_mple-.com", "not a valid host name"),
]


@pytest.mark.parametrize(("url", "host", "reason"), REFUSED_AT_REGISTRATION)
def test_registration_refuses_every_spelling_of_a_non_public_address(
    url: str, host: str, reason: str
) -> None:
    message = refused(url)
    assert message.startswith(f"url refused for host {host!r}: ")
    assert reason in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/hooks", "scheme 'ftp' is not allowed; use http or https"),
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("gopher://example.com:70/", "scheme 'gopher' is not allowed"),
        ("javascript:alert(1)", "scheme 'javascript' is not allowed"),
        ("/relative/path", "scheme '' is not allowed"),
        ("http:///no-host", "the URL has no host"),
        ("http://user:pw@example.com/", "a user name or password in the URL is not allowed"),
        ("http://user@example.com/", "a user name or password"),
        ("http://@example.com/", "a user name or password"),
        ("http://example.com@127.0.0.1/", "a user name or password"),
        ("http://" + "a" * MAX_URL_LENGTH + ".com/", f"longer than {MAX_URL_LENGTH} characters"),
        ("http://[::1/", "not a valid URL"),
    ],
)
def test_registration_refuses_bad_forms_with_a_clear_reason(url: str, reason: str) -> None:
    message = refused(url)
    assert reason in message
    assert message.startswith("url refused for host ")


def test_messages_never_show_the_path_or_query() -> None:
    for url in (
        "http://127.0.0.1/hooks/TOKENPATH?key=SECRETVALUE",
        "ftp://example.com/TOKENPATH?key=SECRETVALUE",
        "http://u:SECRETVALUE@example.com/?key=SECRETVALUE",
        "http://example.com:99999/TOKENPATH?key=SECRETVALUE",
        "http://" + "a" * MAX_URL_LENGTH + "/TOKENPATH?key=SECRETVALUE",
    ):
        message = refused(url, dns=FakeDNS(["93.184.215.14"]))
        assert "SECRETVALUE" not in message and "TOKENPATH" not in message, message


def test_a_name_is_refused_when_any_of_its_addresses_is_not_allowed() -> None:
    dns = FakeDNS(["93.184.215.14", "10.1.2.3"])
    message = refused("https://mixed.example/hooks", dns=dns)
    assert message == (
        "url refused for host 'mixed.example': it resolves to 10.1.2.3, private,"
        " outside allow_networks"
    )
    assert dns.asked == ["mixed.example"]


def test_a_name_that_does_not_resolve_is_refused() -> None:
    message = refused("https://nowhere.example/", dns=FakeDNS([]))
    assert "'nowhere.example': the host does not resolve" in message


def test_public_addresses_and_names_pass_registration() -> None:
    dns = FakeDNS(["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"])
    url = asyncio.run(check_url("https://Hooks.Example.com:8443/in?x=1", PUBLIC, dns))
    assert (url.host, url.port, url.query_string) == ("hooks.example.com", 8443, "x=1")
    for literal in ("http://8.8.8.8/", "http://[2606:4700::1111]/", "http://[::ffff:8.8.8.8]/",
                    "http://[2002:808:808::1]/", "http://[64:ff9b::808:808]/"):  # fmt: skip
        assert asyncio.run(check_url(literal, PUBLIC)).host is not None


# -- the policy ----------------------------------------------------------------------


def test_allow_networks_lists_networks_and_the_word_public() -> None:
    private_only = NetworkPolicy.from_config(["10.0.0.0/8", "fd00::/8"])
    assert private_only.refusal(ipaddress.ip_address("10.9.8.7")) is None
    assert private_only.refusal(ipaddress.ip_address("fd00::5")) is None
    assert private_only.refusal(ipaddress.ip_address("8.8.8.8")) == "outside allow_networks"
    both = NetworkPolicy.from_config(["public", "10.0.0.0/8"])
    assert both.refusal(ipaddress.ip_address("8.8.8.8")) is None
    assert both.refusal(ipaddress.ip_address("10.0.0.1")) is None
    assert both.refusal(ipaddress.ip_address("192.168.0.1")) == "private, outside allow_networks"
    nothing = NetworkPolicy.from_config([])
    assert nothing.refusal(ipaddress.ip_address("8.8.8.8")) == "outside allow_networks"


def test_some_addresses_are_never_allowed() -> None:
    everything = NetworkPolicy.from_config(["0.0.0.0/0", "::/0"])
    assert everything.refusal(ipaddress.ip_address("127.0.0.1")) is None
    for never in ("0.0.0.0", "0.1.2.3", "224.0.0.251", "255.255.255.255", "::", "ff02::1",
                  "::ffff:0.0.0.0"):  # fmt: skip
        assert everything.refusal(ipaddress.ip_address(never)) is not None, never


def test_an_embedded_ipv4_address_must_be_allowed_too() -> None:
    v6_only = NetworkPolicy.from_config(["2002::/16", "64:ff9b::/96"])
    assert v6_only.refusal(ipaddress.ip_address("2002:a00:1::1")) == (
        "6to4 for 10.0.0.1: outside allow_networks"
    )
    mapped_ok = NetworkPolicy.from_config(["10.0.0.0/8"])
    assert mapped_ok.refusal(ipaddress.ip_address("::ffff:10.0.0.1")) is None


@pytest.mark.parametrize(
    ("entries", "words"),
    [
        (["10.0.0.1/8"], "'10.0.0.1/8' is not a network in CIDR form"),
        (["ten"], "'ten' is not a network"),
        (["10.0.0.0/33"], "'10.0.0.0/33'"),
        (["public", "fe80::/129"], "'fe80::/129'"),
    ],
)
def test_a_bad_allow_networks_entry_is_a_config_error(entries: list[str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        NetworkPolicy.from_config(entries)


# -- at every connection ---------------------------------------------------------------


def test_a_public_name_that_rebinds_to_loopback_is_refused_at_connect_time(
    receiver: Receiver,
) -> None:
    dns = FakeDNS(["93.184.215.14"], ["127.0.0.1"])
    url = f"http://rebind.example:{receiver.port}/hooks"
    asyncio.run(check_url(url, PUBLIC, dns))  # registration: a public answer
    with pytest.raises(RefusedURLError) as caught:
        post(PUBLIC, url, dns)  # connection: the same name now answers 127.0.0.1
    assert str(caught.value) == (
        "url refused for host 'rebind.example': it resolves to 127.0.0.1, loopback,"
        " outside allow_networks"
    )
    assert dns.asked == ["rebind.example", "rebind.example"]
    assert post(LOOPBACK, url, FakeDNS(["127.0.0.1"])) == 204  # the control: it would arrive
    assert [r.path for r in receiver.wait_for(1)] == ["/hooks"]  # ...and only the control did


def test_every_new_connection_asks_the_resolver_again(receiver: Receiver) -> None:
    dns = FakeDNS(["127.0.0.1"], ["127.0.0.1"], ["169.254.169.254"])
    url = f"http://flip.example:{receiver.port}/"

    async def three_posts() -> list[int | str]:
        results: list[int | str] = []
        async with guarded_session(LOOPBACK, dns, force_close=True) as session:
            for _ in range(3):
                try:
                    async with session.post(url, data=b"", allow_redirects=False) as r:
                        results.append(r.status)
                except RefusedURLError as exc:
                    results.append(exc.reason)
        return results

    assert asyncio.run(three_posts()) == [
        204, 204, "it resolves to 169.254.169.254, outside allow_networks"
    ]  # fmt: skip
    assert len(receiver.wait_for(2)) == 2


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "2130706433", "0177.0.0.1", "0x7f.1", "0x7f000001", "127.1", "127.000.000.001",
     "[::ffff:127.0.0.1]", "127.0.0.1."],
)  # fmt: skip
def test_ip_literals_are_checked_at_connect_time(receiver: Receiver, host: str) -> None:
    dns = FakeDNS(["127.0.0.1"])  # were any of them sent to a resolver, it would say loopback
    with pytest.raises(RefusedURLError, match="url refused for host"):
        post(PUBLIC, f"http://{host}:{receiver.port}/", dns)
    assert receiver.arrived == []
    assert dns.asked == []  # refused before any lookup: the literal check, not the resolver


def test_odd_ipv4_spellings_are_refused_even_where_loopback_is_allowed(receiver: Receiver) -> None:
    """0x7f.1 reaches 127.0.0.1 through getaddrinfo: plain aiohttp connects to it."""

    async def plain() -> int:
        async with aiohttp.ClientSession() as s, s.post(f"http://0x7f.1:{receiver.port}/") as r:
            return r.status

    assert asyncio.run(plain()) == 204  # the threat is real on this machine
    receiver.wait_for(1)
    for host in ("0x7f.1", "2130706433", "0177.0.0.1", "127.1"):
        with pytest.raises(RefusedURLError, match="four decimal numbers"):
            post(LOOPBACK, f"http://{host}:{receiver.port}/")
    assert len(receiver.arrived) == 1
    assert post(LOOPBACK, f"http://127.0.0.1:{receiver.port}/") == 204
    assert post(LOOPBACK, f"http://[::ffff:127.0.0.1]:{receiver.port}/") == 204


def test_a_followed_redirect_is_checked_hop_by_hop(receiver: Receiver) -> None:
    """Callers never follow redirects; should one do so, the next hop meets the guard too."""
    target = f"http://0x7f.1:{receiver.port}/inner"
    bouncer = Receiver(lambda i, req: (307, {"location": target}, b""))
    try:
        with pytest.raises(RefusedURLError, match=r"'0x7f\.1'"):
            asyncio.run(_post_following(f"http://127.0.0.1:{bouncer.port}/"))
        assert len(bouncer.wait_for(1)) == 1
        assert receiver.arrived == []
    finally:
        bouncer.close()


async def _post_following(url: str) -> int:
    async with guarded_session(LOOPBACK) as s, s.post(url, data=b"", allow_redirects=True) as r:
        return r.status


def test_a_proxy_is_refused(receiver: Receiver) -> None:
    proxy = Receiver()
    try:
        with pytest.raises(RefusedURLError, match="never use a proxy"):
            post(LOOPBACK, f"http://127.0.0.1:{receiver.port}/", proxy=proxy.url)
        assert proxy.arrived == [] and receiver.arrived == []
    finally:
        proxy.close()


def test_the_resolver_keeps_only_allowed_answers() -> None:
    dns = GuardedResolver(PUBLIC, FakeDNS(["169.254.169.254", "93.184.215.14", "::1"]))
    answers = asyncio.run(dns.resolve("mixed.example", 443, socket.AF_UNSPEC))
    assert [a["host"] for a in answers] == ["93.184.215.14"]
