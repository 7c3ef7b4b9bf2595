"""How long to wait: delivery retries, source backoff, Retry-After (pure code).

Jitter only ever shortens a wait, by at most 20%, as CONTRACT.md allows; a
wait is never negative, so nothing stalls with a next attempt in the past.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC
from email.utils import parsedate_to_datetime

MAX_RETRY_AFTER = 86400.0
JITTER = 0.2


def jittered(delay: float, rng: random.Random | None = None) -> float:
    """Shorten `delay` by a random 0-20%: spreads retries without breaking a promise."""
    return delay * (1.0 - JITTER * (rng or random).random())


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), capped at one day."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() alone accepts "²" and "٣"
        seconds = float(value)
    else:
        at = http_date(value)
        if at is None:
            return None
        seconds = at - now
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def http_date(value: str) -> float | None:
    """An HTTP-date (RFC 9110 §5.6.7, any of its three formats) as Unix time, or None."""
    try:
        date = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if date.tzinfo is None:  # asctime and "-0000" dates: HTTP-dates are always GMT
        date = date.replace(tzinfo=UTC)
    return date.timestamp()


def delivery_delay(
    schedule: Sequence[float], attempts: int, retry_after: float | None,
    rng: random.Random | None = None,
) -> float | None:  # fmt: skip
    """Wait before the next attempt after `attempts` failed ones; None means dead."""
    index = max(attempts, 1) - 1  # 0 or less: nothing failed yet, the first delay
    if index >= len(schedule):
        return None
    delay = schedule[index]
    if retry_after is not None:
        delay = max(delay, retry_after)
    return jittered(delay, rng)


def source_backoff(
    interval: float, failures: int, retry_after: float | None, rng: random.Random | None = None
) -> float:
    """Wait before re-polling a failing source: doubles, capped at max(30 s, 10 intervals)."""
    cap = max(30.0, 10.0 * interval)
    delay = min(interval * 2.0 ** min(failures, 30), cap)
    delay = max(jittered(delay, rng), min(interval, cap))
    if retry_after is not None:
        delay = max(delay, jittered(retry_after, rng))
    return delay
