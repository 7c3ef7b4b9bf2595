"""`rate:` per subscriber: parse `1/s`, `30/m`, `100/h`, and space requests to match.

Slack allows about one message a second per incoming webhook (the only
default here); Teams documents 4 a second but also 100 an hour per webhook,
which `rate: 100/h` or a `digest:` respects. A rate is enforced as evenly
spaced slots (`30/m` is one request every 2 s): a burst never arrives at once,
and no window of the rate's length ever sees more than the rate plus one.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..errors import TargetConfigError

_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*$")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_PER_SECOND = 1000.0
RATE_HINT = "a rate like 1/s, 30/m or 100/h"
# what the services document; a subscriber's own `rate:` replaces it
DEFAULT_RATES = {"slack": "1/s"}


@dataclass(frozen=True)
class Rate:
    """`count` requests per `per` seconds."""

    count: float
    per: float

    @property
    def interval(self) -> float:
        """Seconds between two requests."""
        return self.per / self.count

    def __str__(self) -> str:
        unit = {v: k for k, v in _UNITS.items()}[self.per]
        return f"{self.count:g}/{unit}"


def parse_rate(value: Any) -> Rate:
    """`1/s`, `30/m`, `100/h`, `2000/d` (also `/sec`, `/min`, ...); TargetConfigError otherwise."""
    match = _RATE_RE.match(value) if isinstance(value, str) else None
    if not match:
        raise TargetConfigError(f"'rate': {value!r} is not {RATE_HINT}", key="rate")
    rate = Rate(float(match.group(1)), _UNITS[match.group(2)[0]])
    if not 0 < rate.count / rate.per <= MAX_PER_SECOND:
        raise TargetConfigError(
            f"'rate': {value!r} must be above 0 and at most {MAX_PER_SECOND:g}/s", key="rate"
        )
    return rate


def default_rate(fmt: str) -> Rate | None:
    """The rate a format gets when its subscriber sets none."""
    return parse_rate(DEFAULT_RATES[fmt]) if fmt in DEFAULT_RATES else None


class RateLimiter:
    """Evenly spaced slots for one subscriber's requests; await `wait()` before each.

    Each caller reserves the next free slot before it sleeps, so concurrent
    attempts queue in order without a lock. A cancelled wait leaves its slot
    unused: the limiter may run slower than the rate, never faster. `clock`
    and `sleep` are injectable so tests need no wall-clock waits.
    """

    def __init__(
        self,
        rate: Rate,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] | None = None,
    ) -> None:
        import asyncio  # here, not at the top: loading a config must not import asyncio

        self.rate = rate
        self._clock = clock
        self._sleep = sleep or asyncio.sleep
        self._next = float("-inf")  # the earliest time the next request may start

    async def wait(self) -> float:
        """Sleep until this caller's slot; return the seconds waited."""
        now = self._clock()
        slot = max(now, self._next)
        self._next = slot + self.rate.interval
        delay = slot - now
        if delay > 0:
            await self._sleep(delay)
        return delay
