"""Chat and notification targets against real local servers on 127.0.0.1.

Each preset's body is POSTed to an aiohttp receiver that checks what that
service documents for its incoming webhooks (shape and limits) and answers
as the service would (400 on a bad body); Apprise sends through its own
`json://` plugin to an aiohttp receiver and its `mailto://` plugin to an
aiosmtpd SMTP server. Nothing here mocks a transport.
"""

from __future__ import annotations

import asyncio
import base64
import email.policy
import itertools
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from email import message_from_bytes
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller

from pollhook.errors import NotifyError
from pollhook.targets import (
    AppriseSender,
    HttpMessage,
    Notification,
    RateLimiter,
    Target,
    parse_rate,
)

PRESETS = ("slack", "discord", "teams", "mattermost", "google-chat", "ntfy")
TEN_MB = 10 * 1024 * 1024


def event(key: str = "42", **item: Any) -> dict[str, Any]:
    return {
        "type": "item.updated",
        "id": f"msg_0192a3b4c5d6e7f8091a2b3c{int(key) % 100:02d}" if key.isdigit() else "msg_x",
        "timestamp": "2026-11-27T16:00:00.123Z",
        "data": {
            "source": "tickets",
            "key": key,
            "item": {"id": key, "status": "closed", **item},
            "previous": {"id": key, "status": "open"},
            "changes": [{"op": "replace", "path": "/status", "value": "closed"}]
            + [{"op": "add", "path": f"/{k}", "value": v} for k, v in item.items()],
        },
    }


# -- receivers that check each service's documented body ------------------------------


def _utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def check_slack(body: bytes, headers: Any) -> str:
    payload = orjson.loads(body)
    text = payload["text"]
    assert isinstance(text, str) and 0 < _utf16(text) <= 4000
    # & < > appear only as Slack's escapes or its own markup
    rest = text.replace("&amp;", "").replace("&lt;", "").replace("&gt;", "")
    assert "&" not in rest
    return str(text)


def check_discord(body: bytes, headers: Any) -> str:
    payload = orjson.loads(body)
    assert 0 < _utf16(payload["content"]) <= 2000
    assert payload["allowed_mentions"] == {"parse": []}
    return str(payload["content"])


def check_teams(body: bytes, headers: Any) -> str:
    assert len(body) <= 28_000
    payload = orjson.loads(body)
    assert payload["type"] == "message"
    (attachment,) = payload["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard"
    assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    assert card["version"] in ("1.0", "1.1", "1.2", "1.3", "1.4", "1.5")
    assert card["body"] and all(b["type"] == "TextBlock" for b in card["body"])
    return "\n".join(b["text"] for b in card["body"])


def check_mattermost(body: bytes, headers: Any) -> str:
    text = orjson.loads(body)["text"]
    assert 0 < _utf16(text) <= 16383
    return str(text)


def check_google_chat(body: bytes, headers: Any) -> str:
    assert len(body) <= 32_000
    return str(orjson.loads(body)["text"])


def check_ntfy(body: bytes, headers: Any) -> str:
    assert headers["content-type"].startswith("text/plain")
    assert 0 < len(body) <= 4096  # larger bodies would arrive as an attachment
    title = headers["Title"]
    assert title.isascii()
    if title.startswith("=?UTF-8?B?"):
        title = base64.b64decode(title[10:-2]).decode()
    return f"{title}\n{body.decode()}"


CHECKS: dict[str, Callable[[bytes, Any], str]] = {
    "slack": check_slack,
    "discord": check_discord,
    "teams": check_teams,
    "mattermost": check_mattermost,
    "google-chat": check_google_chat,
    "ntfy": check_ntfy,
}


class Receiver:
    """An aiohttp app on 127.0.0.1 recording requests; `check` decides 200 or 400."""

    def __init__(self, check: Callable[[bytes, Any], str] | None = None) -> None:
        self.check = check
        self.seen: list[tuple[str, dict[str, str], bytes, str]] = []
        self.status = 200
        self.hang: asyncio.Event | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.hang is not None:
            await self.hang.wait()
        text = ""
        if self.check is not None:
            try:
                text = self.check(body, request.headers)
            except (AssertionError, KeyError, ValueError, TypeError) as exc:
                return web.Response(status=400, text=f"invalid payload: {exc!r}")
        self.seen.append((request.method, dict(request.headers), body, text))
        return web.Response(status=self.status, text="ok")


@asynccontextmanager
async def serve(receiver: Receiver) -> AsyncIterator[str]:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        if receiver.hang is not None:
            receiver.hang.set()
        await runner.cleanup()


async def send(session: aiohttp.ClientSession, url: str, message: Any) -> int:
    """What the delivery worker will do with an HttpMessage."""
    assert isinstance(message, HttpMessage)
    headers = {"content-type": message.content_type, **message.headers}
    async with session.request(message.method, url, data=message.body, headers=headers) as r:
        return r.status


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(main())  # type: ignore[arg-type]


# -- presets --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", PRESETS)
def test_each_preset_is_accepted_by_a_receiver_checking_its_documented_body(fmt: str) -> None:
    """One event, a 12-event digest, and an event with a 10 MB field: all accepted."""
    receiver = Receiver(CHECKS[fmt])
    target = Target.build(fmt)
    messages = [
        target.render(event()),
        target.render_digest([event(str(i)) for i in range(12)]),
        target.render(event(note="<!channel> & " + "é" * TEN_MB)),
        Target.build(fmt, text="{{ event.data.item.note }}").render(event(note="😀" * 100_000)),
    ]

    async def main() -> list[int]:
        async with serve(receiver) as url, aiohttp.ClientSession() as session:
            return [await send(session, url, m) for m in messages]

    assert run(main) == [200, 200, 200, 200]
    texts = [seen[3] for seen in receiver.seen]
    assert "tickets 42 updated" in texts[0] and "open → closed" in texts[0]
    assert "12 changes in tickets" in texts[1] and texts[1].rstrip().endswith("and 2 more")
    assert "note added: " in texts[2] and texts[2].endswith("éé…")  # the value shortened
    assert texts[3].count("😀") > 100 and texts[3].endswith("more characters)")


def test_a_template_is_sent_with_its_method_content_type_and_headers() -> None:
    def check(body: bytes, headers: Any) -> str:
        assert headers["content-type"] == "application/vnd.api+json"
        assert headers["X-Source"] == "tickets"
        return str(orjson.loads(body))

    receiver = Receiver(check)
    target = Target.build(
        "template",
        template={
            "body": '{"data": {"type": "alert", "attributes": {"summary": {{ line | json }},'
            ' "key": {{ event.data.key | json }}}}}',
            "content_type": "application/vnd.api+json",
            "method": "PATCH",
            "headers": {"X-Source": "{{ event.data.source }}"},
        },
    )

    async def main() -> int:
        async with serve(receiver) as url, aiohttp.ClientSession() as session:
            return await send(session, url, target.render(event(key='"}, "x": {"')))

    assert run(main) == 200
    method, _headers, body, _text = receiver.seen[0]
    assert method == "PATCH"
    assert orjson.loads(body)["data"]["attributes"]["key"] == '"}, "x": {"'


# -- rate: ----------------------------------------------------------------------------


def test_rate_limiter_spaces_real_requests() -> None:
    """Five concurrent sends at 20/s start at least 50 ms apart (a lower bound only)."""
    receiver = Receiver(check_slack)
    limiter = RateLimiter(parse_rate("20/s"))
    message = Target.build("slack").render(event())
    started: list[float] = []

    async def one(session: aiohttp.ClientSession, url: str) -> int:
        await limiter.wait()
        started.append(time.monotonic())
        return await send(session, url, message)

    async def main() -> list[int]:
        async with serve(receiver) as url, aiohttp.ClientSession() as session:
            return list(await asyncio.gather(*(one(session, url) for _ in range(5))))

    assert run(main) == [200] * 5
    assert len(receiver.seen) == 5
    gaps = [b - a for a, b in itertools.pairwise(started)]
    assert min(gaps) >= 0.05 - 0.005  # asyncio may wake up to its clock resolution early


# -- Apprise --------------------------------------------------------------------------


def test_apprise_json_reaches_a_local_receiver() -> None:
    receiver = Receiver()

    async def main() -> None:
        async with serve(receiver) as url:
            sender = AppriseSender(url.replace("http://", "json://"))
            await sender.send(Target.build("apprise").render(event()), timeout=10)  # type: ignore[arg-type]

    run(main)
    (method, _headers, body, _text) = receiver.seen[0]
    assert method == "POST"
    payload = orjson.loads(body)
    assert payload["title"] == "tickets 42 updated"
    assert payload["message"] == "tickets 42 updated: status open → closed"


class _Mailbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_apprise_mailto_reaches_a_local_smtp_server() -> None:
    mailbox = _Mailbox()
    port = _free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        sender = AppriseSender(
            f"mailto://127.0.0.1:{port}?from=pollhook@example.com&to=ops@example.com&mode=insecure"
        )
        digest = Target.build("apprise").render_digest([event(str(i)) for i in range(12)])
        run(lambda: sender.send(digest, timeout=10))  # type: ignore[arg-type]
    finally:
        controller.stop()
    (envelope,) = mailbox.messages
    assert envelope.mail_from == "pollhook@example.com"
    assert envelope.rcpt_tos == ["ops@example.com"]
    mail = message_from_bytes(envelope.content, policy=email.policy.default)
    assert mail["Subject"] == "12 changes in tickets"
    text = mail.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "• tickets 0 updated: status open → closed" in text
    assert "and 2 more" in text


def test_apprise_refused_is_a_notify_error_with_its_log_and_no_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # as `--log-level debug`: Apprise logs its URLs at DEBUG
    port = _free_port()  # nothing listens there
    sender = AppriseSender(f"json://bob:hunter2pass@127.0.0.1:{port}/hook?token=s3cr3tt0ken")
    assert "hunter2pass" not in repr(sender) and repr(sender) == "AppriseSender(json://***)"
    with pytest.raises(NotifyError) as err:
        run(lambda: sender.send(Notification("t", "b"), timeout=10))
    message = str(err.value)
    assert "Connection error" in message  # Apprise's own words for that call
    for secret in ("hunter2pass", "s3cr3tt0ken", "bob", str(port)):
        assert secret not in message
        assert secret not in caplog.text
    assert "\n" not in message


def test_apprise_error_status_is_a_notify_error_without_apprise_retries() -> None:
    receiver = Receiver()
    receiver.status = 503

    async def main() -> None:
        async with serve(receiver) as url:
            sender = AppriseSender(url.replace("http://", "json://") + "?retry=3")
            await sender.send(Notification("t", "b"), timeout=10)

    with pytest.raises(NotifyError, match="503"):
        run(main)
    assert len(receiver.seen) == 1  # the URL's `retry=3` is overridden: pollhook retries


def test_apprise_timeout_is_a_notify_error_and_holds_the_subscriber_turn() -> None:
    """A hung endpoint: the wait gives up, and the next call waits for the thread to end."""
    receiver = Receiver()

    async def main() -> tuple[str, float]:
        receiver.hang = asyncio.Event()
        async with serve(receiver) as url:
            sender = AppriseSender(url.replace("http://", "json://"))
            with pytest.raises(NotifyError) as err:
                await sender.send(Notification("t", "first"), timeout=0.3)
            second = asyncio.create_task(sender.send(Notification("t", "second"), timeout=10))
            blocked = sender._lock is not None and sender._lock.locked()  # the first still runs
            receiver.hang.set()  # the first call's request now completes
            receiver.hang = None
            await second
            return str(err.value), float(blocked)

    message, blocked = run(main)
    assert message == "Apprise did not answer within 0.3s"
    assert blocked == 1.0  # one Apprise object never runs two calls at once
    assert [orjson.loads(seen[2])["message"] for seen in receiver.seen] == ["first", "second"]


def test_concurrent_apprise_calls_each_get_their_own_log() -> None:
    """Two subscribers failing at once: each error is its own call's log, never the other's."""
    failing = Receiver()
    failing.status = 503
    refused_port = _free_port()

    async def main() -> list[BaseException | None]:
        async with serve(failing) as url:
            senders = [
                AppriseSender(url.replace("http://", "json://")),
                AppriseSender(f"json://127.0.0.1:{refused_port}/hook"),
            ]
            results = await asyncio.gather(
                *(s.send(Notification("t", "b"), timeout=10) for s in senders for _ in range(3)),
                return_exceptions=True,
            )
            return list(results)

    errors = [str(e) for e in run(main)]
    assert len(errors) == 6
    for text in errors[:3]:
        assert "503" in text and "Connection error" not in text
    for text in errors[3:]:
        assert "Connection error" in text and "503" not in text


def test_an_apprise_exception_is_a_notify_error_without_the_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plugin bug quoting its URL: recorded as a failed attempt, the URL scrubbed."""
    url = "json://bob:hunter2pass@127.0.0.1:9/hook"
    sender = AppriseSender(url)

    def broken(**kwargs: Any) -> None:
        raise ValueError(f"cannot post to {url}")

    monkeypatch.setattr(sender._service._apprise, "notify", broken)
    with pytest.raises(NotifyError) as err:
        run(lambda: sender.send(Notification("t", "b"), timeout=10))
    assert str(err.value).startswith("Apprise failed: ValueError: cannot post to ")
    assert "hunter2pass" not in str(err.value) and "bob" not in str(err.value)
