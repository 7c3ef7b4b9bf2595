"""Verification of intent, the WebSub way: the callback must echo a random challenge.

Before anything is delivered to an API-registered URL, pollhook sends

    GET <url>?hub.mode=subscribe&hub.topic=<sources>&hub.challenge=<random>&hub.lease_seconds=<n>

(appended to the URL's own query), and only a 2xx whose body is exactly the
challenge verifies. This proves that whoever answers at the URL asked for
the webhooks, so a token holder cannot aim pollhook at a server that never
wanted them. Each challenge is fresh from `secrets` and used once; the
answer must come within VERIFY_TIMEOUT and is read up to MAX_ECHO bytes;
redirects are not followed; the request goes through the SSRF guard like
every other to that URL (pass a `guarded_session`).
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections.abc import Sequence

import aiohttp
from yarl import URL

from pollhook.errors import RefusedURLError, VerificationError

VERIFY_TIMEOUT = 10.0  # seconds for the whole exchange: connect, answer, body
MAX_ECHO = 1024  # bytes of the answer read at most; a challenge is 43
ALL_SOURCES = "*"  # hub.topic of a subscription to every source


def new_challenge() -> str:
    """A fresh random challenge (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def topic(sources: Sequence[str] | None) -> str:
    """`hub.topic`: the subscription's sources, comma-separated, or `*` for every source."""
    return ",".join(sources) if sources else ALL_SOURCES


def verification_url(callback: URL, topic: str, challenge: str, lease_seconds: int) -> URL:
    """The callback with the `hub.*` parameters appended after its own query."""
    return callback.extend_query(
        {
            "hub.mode": "subscribe",
            "hub.topic": topic,
            "hub.challenge": challenge,
            "hub.lease_seconds": str(lease_seconds),
        }
    )


async def verify_intent(
    session: aiohttp.ClientSession,
    callback: URL,
    topic: str,
    lease_seconds: int,
    *,
    timeout: float = VERIFY_TIMEOUT,
    user_agent: str = "pollhook",
) -> None:
    """Return when the callback echoes a fresh challenge; else raise VerificationError.

    The message is one line naming the callback's host and what went wrong;
    it never shows the challenge, the path or the query.
    """
    challenge = new_challenge()
    url = verification_url(callback, topic, challenge, lease_seconds)
    headers = {"user-agent": user_agent, "accept-encoding": "identity"}
    try:
        async with asyncio.timeout(timeout):
            answer = await _get(session, url, headers)
    except TimeoutError:
        raise _failed(callback, f"no answer within {timeout:g}s") from None
    except RefusedURLError as exc:
        raise _failed(callback, exc.reason) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise _failed(callback, _describe(exc, url)) from None
    if isinstance(answer, str):
        raise _failed(callback, answer)
    if not hmac.compare_digest(answer, challenge.encode("ascii")):
        hint = " (it has extra whitespace)" if answer.strip() == challenge.encode() else ""
        raise _failed(callback, f"the answer is not the challenge{hint}")


async def _get(session: aiohttp.ClientSession, url: URL, headers: dict[str, str]) -> bytes | str:
    """The body of a 2xx answer (at most MAX_ECHO bytes), or why there is none."""
    async with session.get(url, headers=headers, allow_redirects=False) as response:
        if 300 <= response.status < 400:
            return f"HTTP {response.status}: redirects are not followed"
        if not 200 <= response.status < 300:
            return f"HTTP {response.status}"
        body = b""
        while len(body) <= MAX_ECHO:
            chunk = await response.content.read(MAX_ECHO + 1 - len(body))
            if not chunk:
                return body
            body += chunk
        return f"the answer is longer than {MAX_ECHO} bytes"


def _failed(callback: URL, reason: str) -> VerificationError:
    return VerificationError(f"callback {callback.raw_host!r} not verified: {reason}")


def _describe(exc: BaseException, url: URL) -> str:
    """The error's class and text, without the URL (its query holds the challenge)."""
    text = " ".join(str(exc).split())
    for secret_part in (str(url), url.raw_query_string, url.raw_path):
        if len(secret_part) > 1:
            text = text.replace(secret_part, "...")
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__
