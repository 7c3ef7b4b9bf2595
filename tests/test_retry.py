"""retry: delivery retry delays, source backoff and Retry-After (pure code)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from pollhook.config import DEFAULT_RETRY
from pollhook.retry import MAX_RETRY_AFTER, delivery_delay, parse_retry_after, source_backoff

SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)  # 5s,5m,30m,2h,5h,10h,10h
DRAWS = 2000


class Fixed(random.Random):
    """A random source that always draws the same number: no jitter (0.0) or the most."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


NO_JITTER = Fixed(0.0)
MOST_JITTER = Fixed(1.0 - 2**-53)  # random() never returns 1.0


def test_default_schedule_is_the_documented_one() -> None:
    assert DEFAULT_RETRY == SCHEDULE


# -- delivery_delay -----------------------------------------------------------


@pytest.mark.parametrize(("attempts", "delay"), list(enumerate(SCHEDULE, start=1)))
def test_delivery_delay_follows_the_schedule(attempts: int, delay: float) -> None:
    assert delivery_delay(SCHEDULE, attempts, None, NO_JITTER) == delay
    assert delivery_delay(SCHEDULE, attempts, None, MOST_JITTER) == pytest.approx(0.8 * delay)


@pytest.mark.parametrize("attempts", [len(SCHEDULE) + 1, len(SCHEDULE) + 2, 100, 10**9])
def test_delivery_is_dead_after_the_schedule(attempts: int) -> None:
    assert delivery_delay(SCHEDULE, attempts, None, NO_JITTER) is None
    assert delivery_delay(SCHEDULE, attempts, 60.0, NO_JITTER) is None


@pytest.mark.parametrize("attempts", [0, 1, 2])
def test_empty_schedule_means_one_attempt(attempts: int) -> None:
    assert delivery_delay((), attempts, None, NO_JITTER) is None


@pytest.mark.parametrize("attempts", [0, -1])
def test_no_failed_attempt_yet_waits_the_first_delay(attempts: int) -> None:
    assert delivery_delay(SCHEDULE, attempts, None, NO_JITTER) == SCHEDULE[0]


@pytest.mark.parametrize("seed", [0, 1, 42])
@pytest.mark.parametrize(("attempts", "delay"), list(enumerate(SCHEDULE, start=1)))
def test_jitter_only_shortens_and_by_at_most_20_percent(
    seed: int, attempts: int, delay: float
) -> None:
    rng = random.Random(seed)
    draws = [delivery_delay(SCHEDULE, attempts, None, rng) for _ in range(DRAWS)]
    assert all(d is not None and 0.8 * delay <= d <= delay for d in draws)
    # and it does spread retries out (no thundering herd after an outage)
    spread = [d for d in draws if d is not None]
    assert min(spread) < 0.82 * delay and max(spread) > 0.98 * delay


RETRY_AFTER = [
    # (attempts, Retry-After seconds, the un-jittered delay)
    (1, 60.0, 60.0),  # more than 5 s: Retry-After wins
    (1, 1.0, 5.0),  # less: the schedule wins
    (1, 0.0, 5.0),
    (2, 3600.0, 3600.0),
    (7, 86400.0, 86400.0),
    (3, 1800.0, 1800.0),
]


@pytest.mark.parametrize(("attempts", "retry_after", "expected"), RETRY_AFTER)
def test_retry_after_raises_the_delay(attempts: int, retry_after: float, expected: float) -> None:
    assert delivery_delay(SCHEDULE, attempts, retry_after, NO_JITTER) == expected
    rng = random.Random(attempts)
    for _ in range(DRAWS):
        delay = delivery_delay(SCHEDULE, attempts, retry_after, rng)
        assert delay is not None and 0.8 * expected <= delay <= expected


def test_delivery_delay_uses_the_subscribers_schedule() -> None:
    schedule = (1.0, 2.0)
    assert [delivery_delay(schedule, n, None, NO_JITTER) for n in (1, 2, 3)] == [1.0, 2.0, None]


# -- parse_retry_after ----------------------------------------------------------

NOW = datetime(2026, 11, 27, 16, 0, 0, tzinfo=UTC).timestamp()

PARSE = [
    (None, None),
    ("", None),
    ("   ", None),
    ("120", 120.0),
    (" 120 ", 120.0),
    ("0", 0.0),
    ("007", 7.0),
    ("86400", 86400.0),
    ("86401", MAX_RETRY_AFTER),
    ("99999999999999999999", MAX_RETRY_AFTER),
    ("9" * 400, MAX_RETRY_AFTER),
    # HTTP-date, all three formats of RFC 9110
    ("Fri, 27 Nov 2026 16:02:00 GMT", 120.0),
    ("Friday, 27-Nov-26 16:02:00 GMT", 120.0),
    ("Fri Nov 27 16:02:00 2026", 120.0),
    ("Fri, 27 Nov 2026 16:00:00 GMT", 0.0),  # now
    ("Fri, 27 Nov 2026 15:00:00 GMT", 0.0),  # past: retry now, never a negative wait
    ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
    ("Sat, 28 Nov 2026 16:00:00 GMT", 86400.0),
    ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_AFTER),  # huge: capped at a day
    # garbage is ignored, not a crash and not a zero wait
    ("-5", None),
    ("-0", None),
    ("1.5", None),
    ("1e3", None),
    ("soon", None),
    ("120 seconds", None),
    ("Fri, 31 Feb 2026 16:00:00 GMT", None),
    ("Fri, 27 Nov 99999 16:00:00 GMT", None),
    ("\u00b2", None),  # str.isdigit() is true for a superscript two
    ("\u0663", None),  # ... and for an Arabic-Indic three, which float() accepts
    ("nan", None),
    ("inf", None),
]


@pytest.fixture
def far_timezone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run in a local time zone far from UTC: HTTP-dates are always GMT."""
    monkeypatch.setenv("TZ", "XXX+09:30")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("far_timezone")
@pytest.mark.parametrize(("header", "seconds"), PARSE)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, NOW) == seconds


def test_parse_retry_after_is_relative_to_now() -> None:
    header = "Fri, 27 Nov 2026 16:02:00 GMT"
    assert parse_retry_after(header, NOW + 60) == 60.0
    assert parse_retry_after("30", NOW + 1000) == 30.0


# -- source_backoff -------------------------------------------------------------

INTERVALS = [0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 86400.0]
FAILURES = [*range(1, 40), 100, 10**6]


@pytest.mark.parametrize("interval", INTERVALS)
def test_source_backoff_bounds(interval: float) -> None:
    cap = max(30.0, 10.0 * interval)
    rng = random.Random(int(interval * 10))
    for failures in [0, *FAILURES]:  # 0: a wait of one interval, which jitter must not cut
        for draw in (NO_JITTER, MOST_JITTER, rng, rng, rng):
            wait = source_backoff(interval, failures, None, draw)
            assert interval <= wait <= cap, (interval, failures, wait)


@pytest.mark.parametrize("interval", INTERVALS)
def test_source_backoff_grows_to_the_cap(interval: float) -> None:
    cap = max(30.0, 10.0 * interval)
    waits = [source_backoff(interval, n, None, NO_JITTER) for n in FAILURES]
    assert waits == sorted(waits)
    assert waits[0] == min(2 * interval, cap)
    assert waits[-1] == cap


BACKOFF = [
    # (interval, failures, un-jittered wait)
    (1.0, 1, 2.0),
    (1.0, 2, 4.0),
    (1.0, 4, 16.0),
    (1.0, 5, 30.0),  # 32 s capped at 30 s
    (10.0, 1, 20.0),
    (10.0, 3, 80.0),
    (10.0, 4, 100.0),  # 160 s capped at 10 intervals
    (300.0, 1, 600.0),
    (300.0, 50, 3000.0),
]


@pytest.mark.parametrize(("interval", "failures", "wait"), BACKOFF)
def test_source_backoff_doubles(interval: float, failures: int, wait: float) -> None:
    assert source_backoff(interval, failures, None, NO_JITTER) == wait


@pytest.mark.parametrize("interval", [1.0, 30.0, 600.0])
@pytest.mark.parametrize("retry_after", [600.0, 3600.0, 86400.0])
def test_source_backoff_honours_a_longer_retry_after(interval: float, retry_after: float) -> None:
    rng = random.Random(7)
    for failures in (1, 5, 100):
        plain = source_backoff(interval, failures, None, NO_JITTER)
        longest = max(plain, retry_after)
        assert source_backoff(interval, failures, retry_after, NO_JITTER) == longest
        for _ in range(200):
            wait = source_backoff(interval, failures, retry_after, rng)
            assert 0.8 * retry_after <= wait <= longest


@pytest.mark.parametrize("interval", [1.0, 30.0, 600.0])
def test_a_short_retry_after_changes_nothing(interval: float) -> None:
    cap = max(30.0, 10.0 * interval)
    for failures in (1, 5, 100):
        plain = source_backoff(interval, failures, None, NO_JITTER)
        assert source_backoff(interval, failures, 0.0, NO_JITTER) == plain
        assert source_backoff(interval, failures, 1.0, NO_JITTER) == plain
        assert interval <= source_backoff(interval, failures, 1.0, random.Random(1)) <= cap
