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
    └── UsageError                a command was given arguments it cannot act on (exit 2)

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
