"""Bearer tokens from the config: who is asking, what their scope lets them do, how often.

Only a SHA-256 digest of each token is kept, from the moment it is read:
tokens are long random strings the operator generates, so a fast hash is
enough (nobody can guess one by trying digests), and it lets a lookup compare
digests with `hmac.compare_digest` against every configured token, taking the
same time whichever token matches, or none. No token is ever logged or shown
in a repr.

Scopes (admin sees and does everything; read and subscribe do not overlap):

| action                           | read | subscribe     | admin |
| -------------------------------- | ---- | ------------- | ----- |
| list and get API subscriptions   | all  | its own       | all   |
| create a subscription            | -    | yes           | yes   |
| delete, renew, rotate the secret | -    | its own       | all   |
| console pages                    | yes  | -             | yes   |
| console replay and resume        | -    | -             | yes   |

`subscribe` is for a client outside the operator's team: it sees only the
subscriptions made with a token of the same name (another one's id is a
404, so ids leak nothing), and never the console, which shows every
subscriber's deliveries. `read` is for dashboards and on-call humans.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum, StrEnum

from pollhook.errors import ConfigError, Forbidden, RateLimited, Unauthorized

MIN_TOKEN_LENGTH = 16  # 16 url-safe characters are 96 random bits
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_BEARER = re.compile(r"bearer[ \t]+(\S+)[ \t]*", re.IGNORECASE)


class Scope(StrEnum):
    ADMIN = "admin"
    SUBSCRIBE = "subscribe"
    READ = "read"


class Action(Enum):
    """What a request wants to do; its value reads well in a 403 message."""

    READ_SUBSCRIPTIONS = "list or read subscriptions"
    CREATE_SUBSCRIPTION = "create a subscription"
    CHANGE_SUBSCRIPTION = "delete, renew or rotate a subscription"
    VIEW_CONSOLE = "open the console"
    ACT_IN_CONSOLE = "replay or resume deliveries"


_ALLOWED: dict[Scope, frozenset[Action]] = {
    Scope.READ: frozenset({Action.READ_SUBSCRIPTIONS, Action.VIEW_CONSOLE}),
    Scope.SUBSCRIBE: frozenset(
        {Action.READ_SUBSCRIPTIONS, Action.CREATE_SUBSCRIPTION, Action.CHANGE_SUBSCRIPTION}
    ),
    Scope.ADMIN: frozenset(Action),
}


@dataclass(frozen=True)
class Principal:
    """The configured token a request came with: its name and scope, never the token."""

    name: str
    scope: Scope

    def require(self, action: Action) -> None:
        """Raise Forbidden (403) unless this token's scope allows `action`."""
        if action not in _ALLOWED[self.scope]:
            needed = " or ".join(s.value for s in Scope if action in _ALLOWED[s])
            raise Forbidden(
                f"token {self.name!r} has scope {self.scope.value!r}; to {action.value}"
                f" a token needs scope {needed}"
            )

    def sees(self, owner: str) -> bool:
        """Whether a subscription made by token `owner` exists for this token.

        A `subscribe` token sees only its own: handlers answer 404 for the rest.
        """
        return self.scope is not Scope.SUBSCRIBE or owner == self.name


@dataclass(frozen=True)
class Token:
    """One configured token, kept as its digest only."""

    name: str
    scope: Scope
    digest: bytes = field(repr=False)

    @classmethod
    def create(cls, name: str, token: str, scope: str) -> Token:
        """From the config's `{name, token, scope}`; ConfigError names the entry, not the token."""
        if not _NAME.fullmatch(name):
            raise ConfigError(
                f"tokens: name {name!r} must be 1 to 64 letters, digits, '.', '-' or '_'"
            )
        try:
            level = Scope(scope)
        except ValueError:
            choices = ", ".join(s.value for s in Scope)
            raise ConfigError(f"tokens: {name}: scope {scope!r} is not one of {choices}") from None
        if len(token) < MIN_TOKEN_LENGTH or token != token.strip():
            raise ConfigError(
                f"tokens: {name}: the token must be at least {MIN_TOKEN_LENGTH} characters"
                " without surrounding spaces; make one with"
                " `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        return cls(name, level, _digest(token))


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class Authenticator:
    """Turns a presented token into a Principal, or a 401 with a reason."""

    def __init__(self, tokens: Iterable[Token]) -> None:
        self.tokens = tuple(tokens)
        seen: dict[bytes, str] = {}
        names: set[str] = set()
        for t in self.tokens:
            if t.name in names:
                raise ConfigError(f"tokens: the name {t.name!r} is used twice")
            if t.digest in seen:
                raise ConfigError(f"tokens: {seen[t.digest]!r} and {t.name!r} have the same token")
            names.add(t.name)
            seen[t.digest] = t.name

    def authenticate(self, token: str) -> Principal:
        """The Principal of `token` (e.g. from the console's sign-in form)."""
        presented = _digest(token)
        found: Token | None = None
        for t in self.tokens:  # every one, no early exit: the time says nothing of which
            if hmac.compare_digest(presented, t.digest):
                found = t
        if found is None:
            raise Unauthorized("unknown token")
        return Principal(found.name, found.scope)

    def from_header(self, authorization: str | None) -> Principal:
        """The Principal of an `Authorization: Bearer TOKEN` header value (RFC 6750)."""
        if not authorization:
            raise Unauthorized("missing token: send Authorization: Bearer TOKEN")
        match = _BEARER.fullmatch(authorization)
        if match is None:
            raise Unauthorized("the Authorization header must be 'Bearer TOKEN'")
        return self.authenticate(match.group(1))


class RateLimiter:
    """A token bucket per key (the token's name): `burst` at once, then `per_second`.

    Only writes are limited. Keys are the configured token names, so the
    buckets are as many as the tokens and never grow with traffic.
    """

    def __init__(
        self, per_second: float = 1.0, burst: int = 20, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if per_second <= 0 or burst < 1:
            raise ValueError("a rate limit needs per_second > 0 and burst >= 1")
        self.per_second = per_second
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens left, as of)

    def take(self, key: str) -> None:
        """Spend one write for `key`, or raise RateLimited (429) saying when to come back."""
        now = self.clock()
        left, since = self._buckets.get(key, (float(self.burst), now))
        left = min(float(self.burst), left + max(now - since, 0.0) * self.per_second)
        if left < 1.0:
            self._buckets[key] = (left, now)
            wait = max(1, math.ceil((1.0 - left) / self.per_second))
            raise RateLimited(
                f"too many changes with token {key!r}: retry in {wait}s (at most {self.burst}"
                f" at once, then {self.per_second:g} per second)",
                retry_after=wait,
            )
        self._buckets[key] = (left - 1.0, now)
