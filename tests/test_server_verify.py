"""Verification of intent against real callbacks on 127.0.0.1, leases and secret rotation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from urllib.parse import parse_qsl, urlsplit

import pytest
from standardwebhooks.webhooks import Webhook
from yarl import URL

from pollhook.deliver import signature_header
from pollhook.errors import VerificationError
from pollhook.server import lease
from pollhook.server.lease import DEFAULT_LEASE, MAX_LEASE, Status
from pollhook.server.ssrf import NetworkPolicy, guarded_session
from pollhook.server.verify import MAX_ECHO, topic, verification_url, verify_intent
from pollhook.server.webhook_secrets import (
    OVERLAP,
    StoredSecret,
    new_secret,
    rotate,
    signing_secrets,
)

from servers import WAIT, Receiver, Reply, Request

LOOPBACK = NetworkPolicy.from_config(["127.0.0.1/32"])


def challenge_of(req: Request) -> str:
    return dict(parse_qsl(urlsplit(req.path).query))["hub.challenge"]


def echo(i: int, req: Request) -> Reply:
    return 200, {"content-type": "text/plain"}, challenge_of(req).encode()


@pytest.fixture
def callback() -> Iterator[Receiver]:
    r = Receiver(echo)
    yield r
    r.close()


def verify(url: str, policy: NetworkPolicy = LOOPBACK, sources: list[str] | None = None,
           lease_seconds: int = DEFAULT_LEASE, timeout: float = 10.0) -> None:  # fmt: skip
    async def run() -> None:
        async with guarded_session(policy) as session:
            await verify_intent(session, URL(url), topic(sources), lease_seconds, timeout=timeout)

    asyncio.run(run())


def failure(url: str, **kwargs: object) -> str:
    with pytest.raises(VerificationError) as caught:
        verify(url, **kwargs)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_callback_that_echoes_the_challenge_is_verified(callback: Receiver) -> None:
    verify(f"{callback.url}/hooks?team=blue&x=1", sources=["tickets", "orders"], lease_seconds=3600)
    (req,) = callback.wait_for(1)
    assert req.method == "GET" and req.body == b""
    path, _, query = req.path.partition("?")
    assert path == "/hooks"
    params = parse_qsl(query)
    assert [name for name, _ in params] == [
        "team", "x", "hub.mode", "hub.topic", "hub.challenge", "hub.lease_seconds"
    ]  # fmt: skip
    values = dict(params)
    assert values["team"] == "blue" and values["x"] == "1"
    assert values["hub.mode"] == "subscribe"
    assert values["hub.topic"] == "tickets,orders"
    assert values["hub.lease_seconds"] == "3600"
    assert len(values["hub.challenge"]) >= 43
    assert req.headers["accept-encoding"] == "identity"


def test_every_verification_has_a_new_challenge(callback: Receiver) -> None:
    verify(f"{callback.url}/a")
    verify(f"{callback.url}/a")
    first, second = callback.wait_for(2)
    assert challenge_of(first) != challenge_of(second)
    assert dict(parse_qsl(urlsplit(first.path).query))["hub.topic"] == "*"


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (lambda c: (200, {}, b"wrong"), "the answer is not the challenge"),
        (lambda c: (200, {}, b""), "the answer is not the challenge"),
        (
            lambda c: (200, {}, c.encode() + b"\n"),
            "the answer is not the challenge (it has extra whitespace)",
        ),
        (lambda c: (200, {}, c.upper().encode()), "the answer is not the challenge"),
        (
            lambda c: (200, {}, c.encode() + b"x" * MAX_ECHO),
            f"the answer is longer than {MAX_ECHO} bytes",
        ),
        (lambda c: (404, {}, c.encode()), "HTTP 404"),
        (lambda c: (410, {}, c.encode()), "HTTP 410"),
        (lambda c: (500, {}, c.encode()), "HTTP 500"),
    ],
)
def test_anything_but_an_exact_echo_in_a_2xx_fails(
    reply: Callable[[str], Reply], reason: str
) -> None:
    server = Receiver(lambda i, req: reply(challenge_of(req)))
    try:
        message = failure(f"{server.url}/hooks?key=SECRETVALUE")
        assert message == f"callback '127.0.0.1' not verified: {reason}"
        assert server.wait_for(1)
    finally:
        server.close()


def test_a_204_or_an_empty_2xx_does_not_verify() -> None:
    server = Receiver(lambda i, req: (204, {}, b""))
    try:
        assert "not the challenge" in failure(server.url)
    finally:
        server.close()


def test_a_redirect_is_not_followed(callback: Receiver) -> None:
    bouncer = Receiver(lambda i, req: (302, {"location": f"{callback.url}/elsewhere"}, b""))
    try:
        message = failure(f"{bouncer.url}/hooks")
        assert message == "callback '127.0.0.1' not verified: HTTP 302: redirects are not followed"
        assert len(bouncer.wait_for(1)) == 1
        assert callback.arrived == []
    finally:
        bouncer.close()


def test_a_callback_that_does_not_answer_in_time_fails() -> None:
    def hang(i: int, req: Request) -> Reply:
        server.release.wait(WAIT)  # until the test closes the server
        return 200, {}, challenge_of(req).encode()

    server = Receiver(hang)
    try:
        message = failure(f"{server.url}/slow", timeout=0.5)
        assert message == "callback '127.0.0.1' not verified: no answer within 0.5s"
        assert len(server.wait_arrived(1)) == 1
    finally:
        server.close()


def test_a_body_that_never_ends_is_cut_at_the_cap() -> None:
    def stream(i: int, req: Request) -> Reply:
        handler = req.handler
        handler.send_response(200)
        handler.send_header("transfer-encoding", "chunked")
        handler.end_headers()
        chunk = challenge_of(req).encode() * 10
        try:
            for _ in range(10_000):  # about 4 MB unless the client stops reading
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass
        return -1, {}, b""

    server = Receiver(stream)
    try:
        assert failure(server.url).endswith(f"the answer is longer than {MAX_ECHO} bytes")
    finally:
        server.close()


def test_the_ssrf_guard_applies_to_verification(callback: Receiver) -> None:
    message = failure(f"{callback.url}/hooks", policy=NetworkPolicy())
    assert message == (
        "callback '127.0.0.1' not verified: the address is loopback, outside allow_networks"
    )
    assert callback.arrived == []


def test_a_refused_connection_fails_without_showing_the_query() -> None:
    server = Receiver()
    url = f"{server.url}/hooks?key=SECRETVALUE"
    server.close()  # nothing listens on that port now
    message = failure(url)
    assert message.startswith("callback '127.0.0.1' not verified: ClientConnectorError: ")
    assert "SECRETVALUE" not in message and "hub.challenge" not in message


def test_the_hub_parameters_come_after_the_callbacks_own() -> None:
    url = verification_url(URL("https://h.example/in?a=1&a=2"), "t1,t2", "CH", 60)
    assert str(url) == (
        "https://h.example/in?a=1&a=2&hub.mode=subscribe&hub.topic=t1,t2&hub.challenge=CH"
        "&hub.lease_seconds=60"
    )


# -- leases ------------------------------------------------------------------------


def test_the_lease_granted_is_the_default_or_the_request_up_to_the_maximum() -> None:
    assert DEFAULT_LEASE == 10 * 86_400
    assert lease.grant_lease(None) == DEFAULT_LEASE
    assert lease.grant_lease(60) == 60
    assert lease.grant_lease(MAX_LEASE + 1) == MAX_LEASE


def test_a_lease_expires_and_a_renewal_restarts_it() -> None:
    verified_at = 1_000_000.0
    ends = lease.lease_ends_at(verified_at, 3600)
    assert lease.status_at(Status.ACTIVE, ends, verified_at + 3599) is Status.ACTIVE
    assert lease.delivers(Status.ACTIVE, ends, verified_at + 3599)
    assert lease.status_at(Status.ACTIVE, ends, ends) is Status.EXPIRED
    assert not lease.delivers(Status.ACTIVE, ends, ends)
    renewed = lease.lease_ends_at(verified_at + 3000, 3600)  # a renewal verified before the end
    assert lease.delivers(Status.ACTIVE, renewed, verified_at + 6000)


@pytest.mark.parametrize(
    ("current", "verified", "after"),
    [
        (Status.PENDING, True, Status.ACTIVE),
        (Status.PENDING, False, Status.FAILED),
        (Status.ACTIVE, True, Status.ACTIVE),
        (Status.ACTIVE, False, Status.ACTIVE),  # a failed renewal: the running lease goes on
        (Status.EXPIRED, True, Status.ACTIVE),
        (Status.EXPIRED, False, Status.EXPIRED),
        (Status.GONE, True, Status.ACTIVE),
        (Status.FAILED, False, Status.FAILED),
    ],
)
def test_states_after_a_verification(current: Status, verified: bool, after: Status) -> None:
    assert lease.after_verification(current, verified) is after


@pytest.mark.parametrize("status", [Status.PENDING, Status.FAILED, Status.EXPIRED, Status.GONE])
def test_nothing_is_delivered_outside_an_active_lease(status: Status) -> None:
    assert not lease.delivers(status, time.time() + 3600, time.time())


# -- secrets -----------------------------------------------------------------------

BODY = b'{"type":"item.created"}'


def signed_by(secrets: list[str], at: int) -> dict[str, str]:
    return {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(at),
        "webhook-signature": signature_header(secrets, "msg_1", at, BODY),
    }


def test_a_new_secret_is_32_random_bytes_that_receivers_accept() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and len(secret) == len("whsec_") + 44
    assert secret != new_secret()
    now = int(time.time())
    Webhook(secret).verify(BODY, signed_by([secret], now))


def test_rotation_signs_with_both_secrets_for_24_hours() -> None:
    now = time.time()
    old = new_secret()
    new, stored = rotate([StoredSecret(old)], now)
    assert [s.retires_at for s in stored] == [None, now + OVERLAP]
    assert signing_secrets(stored, now) == [new, old]
    at = int(now)
    headers = signed_by(signing_secrets(stored, now), at)
    Webhook(old).verify(BODY, headers)  # a receiver not yet switched
    Webhook(new).verify(BODY, headers)  # a receiver already switched
    assert signing_secrets(stored, now + OVERLAP - 1) == [new, old]
    assert signing_secrets(stored, now + OVERLAP) == [new]


def test_a_second_rotation_within_the_overlap_retires_the_oldest_at_once() -> None:
    first = new_secret()
    second, stored = rotate([StoredSecret(first)], 1000.0)
    third, stored = rotate(stored, 2000.0)
    assert signing_secrets(stored, 2000.0) == [third, second]
    assert [s.retires_at for s in stored] == [None, 2000.0 + OVERLAP]


def test_a_secret_never_shows_in_a_repr() -> None:
    secret = new_secret()
    assert secret not in repr(StoredSecret(secret, 5.0))


def test_the_callback_in_docs_api_md_verifies() -> None:
    from aiohttp import web

    async def hooks(request: web.Request) -> web.Response:  # as docs/api.md shows it
        if request.method == "GET" and request.query.get("hub.mode") == "subscribe":
            return web.Response(text=request.query["hub.challenge"])
        return web.Response(status=204)

    async def run() -> None:
        app = web.Application()
        app.router.add_route("*", "/pollhook", hooks)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with guarded_session(LOOPBACK) as session:
                url = URL(f"http://127.0.0.1:{port}/pollhook")
                await verify_intent(session, url, "tickets", DEFAULT_LEASE)
                with pytest.raises(VerificationError, match="HTTP 404"):
                    await verify_intent(session, url.with_path("/other"), "tickets", 60)
        finally:
            await runner.cleanup()

    asyncio.run(run())
