"""`format: apprise`: any Apprise URL (email, Telegram, Matrix, ...), with the outbox's guarantees.

Apprise answers only True or False and runs blocking code, so each
subscriber gets ONE `Apprise` object, built once, with Apprise's own retries
off (pollhook's `retry:` schedule decides), and `notify()` runs in a small
thread pool, one call at a time per subscriber. False becomes a NotifyError
whose text is what Apprise logged during that call, captured per call (a
context variable routes each log record to the call that made it, so
concurrent subscribers never see each other's logs).

The URL is a secret (it holds bot tokens, passwords, webhook keys): it is
shown as its scheme only (`tgram://***`) in reprs and errors, every part of it
is scrubbed from Apprise's log text, and Apprise's logger (and urllib3's,
which Apprise's HTTP services use) is detached from pollhook's log output.
Apprise is optional (`pip install 'pollhook[apprise]'`) and imported only
when an Apprise subscriber is configured.
"""

from __future__ import annotations

import contextvars
import difflib
import functools
import logging
import urllib.parse
from typing import TYPE_CHECKING, Any

from ..errors import NotifyError, TargetConfigError
from ._messages import Notification

if TYPE_CHECKING:  # asyncio and the pool are imported on first send: `check` never needs them
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

INSTALL_HINT = "format 'apprise' needs the Apprise library: pip install 'pollhook[apprise]'"
THREADS = 4  # notify() calls running at once, over every Apprise subscriber
ERROR_MAX = 2000  # characters of Apprise's log kept as an attempt's error
_MIN_SECRET = 3  # URL parts shorter than this are not scrubbed from log text
_capture: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "pollhook_apprise_capture", default=None
)


def redact_url(url: str) -> str:
    """What may be shown of an Apprise URL: its scheme."""
    scheme, sep, _rest = url.partition("://")
    return f"{scheme}://***" if sep and scheme.isascii() and scheme.isalnum() else "***"


def check_apprise_url(url: Any) -> None:
    """Config time: Apprise is installed, knows the scheme, and can use the URL."""
    _Service(url)


class AppriseSender:
    """Sends one subscriber's notifications through its one Apprise object."""

    def __init__(self, url: str) -> None:
        self._service = _Service(url)
        self._lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"AppriseSender({redact_url(self._service.url)})"

    async def send(self, note: Notification, timeout: float) -> None:
        """Notify, or NotifyError (False, an exception, a timeout). Never blocks the loop.

        The call holds this subscriber's turn until its thread returns, even
        when the wait for it times out, so one Apprise object never runs twice
        at once.
        """
        import asyncio

        if self._lock is None:
            self._lock = asyncio.Lock()
        lock = self._lock
        await lock.acquire()
        try:
            future = asyncio.get_running_loop().run_in_executor(
                _executor(), self._service.notify, note
            )
        except BaseException:
            lock.release()
            raise
        future.add_done_callback(lambda done: _settle(done, lock))
        try:
            ok, logged = await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            raise NotifyError(f"Apprise did not answer within {timeout:g}s") from None
        except Exception as exc:  # a bug in a plugin: its message may quote the URL
            detail = self._service.scrub([f"{type(exc).__name__}: {exc}"])
            raise NotifyError(f"Apprise failed: {detail}") from None
        if not ok:
            raise NotifyError(logged or "Apprise reported a failure and logged nothing")


def _settle(done: asyncio.Future[Any], lock: asyncio.Lock) -> None:
    lock.release()
    if not done.cancelled():
        done.exception()  # retrieved: an answer that came after a timeout is not an error


class _Service:
    """The Apprise object for one URL, plus what is needed to scrub that URL from logs."""

    def __init__(self, url: Any) -> None:
        if not isinstance(url, str) or not url.strip():
            raise TargetConfigError("'url' must be an Apprise URL like mailto://...", key="url")
        module = _apprise()
        self.url = url.strip()
        self._secrets = _secret_parts(self.url)
        scheme = self.url.partition("://")[0].lower() if "://" in self.url else ""
        known = _schemes()
        if scheme not in known:
            raise TargetConfigError(_unknown_scheme(scheme, known), key="url")
        asset = module.AppriseAsset(async_mode=False, storage_mode="memory")
        self._apprise = module.Apprise(asset=asset)
        with _Capture() as logged:
            added = self._apprise.add(self.url)
        if not added:
            reason = self.scrub(logged) or "see the Apprise wiki for its syntax"
            raise TargetConfigError(
                f"'url': Apprise cannot use this {scheme}:// URL: {reason}", key="url"
            )
        for service in self._apprise:
            service.retry = 0  # Apprise's own `?retry=`: pollhook's schedule retries instead

    def notify(self, note: Notification) -> tuple[bool, str]:
        """In a worker thread: send, and return (ok, the scrubbed log of this call)."""
        with _Capture() as logged:
            ok = bool(self._apprise.notify(body=note.body, title=note.title, body_format="text"))
        return ok, self.scrub(logged)

    def scrub(self, logged: list[str]) -> str:
        """Apprise's log lines as one line, every part of the URL replaced by `***`."""
        text = " ".join(" ".join(logged).split())
        for part in self._secrets:
            text = text.replace(part, "***")
        return text[:ERROR_MAX]


class _Capture:
    """Collects the Apprise log records of the code run inside it, in this thread only."""

    def __enter__(self) -> list[str]:
        _install_handler()
        self._records: list[str] = []
        self._token = _capture.set(self._records)
        return self._records

    def __exit__(self, *exc: object) -> None:
        _capture.reset(self._token)


class _Handler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        records = _capture.get()
        if records is not None:
            records.append(record.getMessage())


@functools.cache
def _install_handler() -> None:
    """Apprise's logs, and those of urllib3 under it, go only into the capture.

    Both name the URL (urllib3's DEBUG request lines carry path and query,
    where services keep their tokens), so they never reach pollhook's log.
    """
    for name in ("apprise", "urllib3"):
        logger = logging.getLogger(name)
        logger.addHandler(_Handler(logging.WARNING))
        logger.setLevel(logging.WARNING)
        logger.propagate = False


@functools.cache
def _executor() -> ThreadPoolExecutor:
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="pollhook-apprise")


def _apprise() -> Any:
    try:
        import apprise
    except ImportError:
        raise TargetConfigError(INSTALL_HINT, key="format") from None
    return apprise


@functools.cache
def _schemes() -> frozenset[str]:
    """Every scheme this Apprise installation knows, from its own service list."""
    details: dict[str, Any] = _apprise().Apprise().details()
    found: set[str] = set()
    for schema in details.get("schemas", ()):
        for key in ("protocols", "secure_protocols"):
            found.update(p.lower() for p in schema.get(key) or () if isinstance(p, str))
    return frozenset(found)


def _unknown_scheme(scheme: str, known: frozenset[str]) -> str:
    if not scheme:
        return "'url': not an Apprise URL (expected scheme://..., e.g. mailto://...)"
    close = difflib.get_close_matches(scheme, sorted(known), n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}://'?)" if close else ""
    return f"'url': Apprise has no service '{scheme}://'{hint}"


def _secret_parts(url: str) -> list[str]:
    """Every part of the URL that could be a secret, longest first, raw and decoded.

    User, password, host, port, path segments, query values and fragment:
    tokens and passwords sit in different places for each service.
    """
    rest = url.partition("://")[2]
    rest, _hash, fragment = rest.partition("#")
    location, _q, query = rest.partition("?")
    parts = {url, rest, location, query, fragment}
    for piece in location.replace("@", "/").split("/"):
        parts.update({piece, *piece.split(":")})
    parts.update(value for _name, value in urllib.parse.parse_qsl(query, keep_blank_values=True))
    parts.update({urllib.parse.unquote(p) for p in parts})
    return sorted((p for p in parts if len(p) >= _MIN_SECRET), key=len, reverse=True)
