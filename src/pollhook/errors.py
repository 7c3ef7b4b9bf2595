"""The one exception tree of pollhook.

    PollhookError                 root: everything pollhook raises on purpose
    ├── ConfigError               bad or unreadable configuration (exit code 2)
    │   └── TargetConfigError     a subscriber's format, text, template, when, rate or
    │                             Apprise URL is invalid; carries the key and the
    │                             template's own line for the validator to place
    ├── StateError                the state file cannot be opened, locked or written
    │   └── LockedError           another pollhook process holds the state file
    ├── SourceError               one poll failed: nothing from it is recorded
    │   ├── FetchError            network, status, size or timeout problem upstream
    │   └── ExtractError          the body does not parse or has the wrong shape
    ├── DeliveryError             one attempt failed before or without an HTTP answer:
    │   │                         recorded as a failed attempt and retried, never a crash
    │   ├── RenderError           a template failed for this event (undefined value,
    │   │                         sandbox, invalid JSON, output over the cap)
    │   └── NotifyError           Apprise answered False or timed out (its log as the text)
    ├── ListenError               `--metrics` cannot listen on its address
    ├── UsageError                a command was given arguments it cannot act on (exit 2)
    ├── RefusedURLError           an API-registered URL may not be reached (form, SSRF guard)
    ├── VerificationError         a callback did not confirm intent (WebSub challenge)
    └── ApiError                  an API request refused: a 4xx with a JSON `{error}`
        ├── BadRequest            400: the body or a parameter is invalid
        ├── Unauthorized          401: no token, or an unknown one
        ├── Forbidden             403: the token's scope does not allow this
        ├── NotFound              404: no such subscription (or not the token's own)
        ├── Conflict              409: it exists already, or a verification is under way
        └── RateLimited           429: the token's write budget is spent; see `retry_after`

Third-party errors (aiohttp, sqlite3, yaml, jmespath) are translated where they
enter; only the CLI turns these into messages and exit codes.
"""

from __future__ import annotations


class PollhookError(Exception):
    """Root of every error pollhook raises on purpose."""


class ConfigError(PollhookError):
    """The configuration is invalid; the message names file, line and key."""


class TargetConfigError(ConfigError):
    """A chat/notification setting is invalid; the validator adds file and line.

    `key` is the subscriber key at fault (`format`, `text`, `template.body`,
    `when`, `rate`, `url`, ...). `line` is the line within a template value
    (1 = its first line) when the fault is inside one, else None.
    """

    def __init__(self, message: str, *, key: str, line: int | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.line = line


class UsageError(PollhookError):
    """A command's arguments cannot be acted on."""


class StateError(PollhookError):
    """The state file cannot be used."""


class LockedError(StateError):
    """Another pollhook process already runs on this state file."""


class SourceError(PollhookError):
    """A poll failed; it changes no state and sends no events."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class FetchError(SourceError):
    """The upstream could not be fetched (network, status, size, timeout)."""


class ExtractError(SourceError):
    """The body does not parse, or items/keys are not what the config says."""


class DeliveryError(PollhookError):
    """One attempt failed without an HTTP answer: recorded, retried on the schedule."""


class RenderError(DeliveryError):
    """A template failed for this event; fixing the template repairs a replay."""


class NotifyError(DeliveryError):
    """Apprise reported a failure; the message is its log for that call, secrets removed."""


class ListenError(PollhookError):
    """The metrics listener cannot bind its address (in use, not ours): exit 1, one line."""


class RefusedURLError(PollhookError):
    """A URL from the API is refused: its form, or an address outside `allow_networks`.

    The message names the host and the reason, never the path or query (which
    may carry the receiver's own secret).
    """

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"url refused for host {host!r}: {reason}")
        self.host = host
        self.reason = reason


class VerificationError(PollhookError):
    """The callback did not prove intent: wrong echo, error status, timeout, refused URL."""


class ApiError(PollhookError):
    """An API request is answered with `status` and `{"error": message}`."""

    status = 400

    def headers(self) -> dict[str, str]:
        """Extra response headers this answer needs (RFC 6750, RFC 9110)."""
        return {}


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="pollhook"'}


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class RateLimited(ApiError):
    status = 429

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}
