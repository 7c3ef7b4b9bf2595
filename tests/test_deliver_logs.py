"""Delivery logging stays bounded: one line per subscriber and batch at INFO."""

from __future__ import annotations

import logging

import pytest

from pollhook.deliver import _log_delivered
from pollhook.store import Outcome


def _outcome(sub: str, n: int, status: str = "delivered") -> Outcome:
    return Outcome(
        delivery_id=n, at=0.0, status_code=204, duration_ms=1.0, error=None, response_body="",
        new_status=status, attempts=1, next_attempt_at=None, subscriber=sub, event_id=f"evt_{n}",
    )  # fmt: skip


BATCH = [_outcome("a", 1), _outcome("a", 2), _outcome("a", 3), _outcome("b", 4),
         _outcome("c", 5, status="pending")]  # fmt: skip


def _run(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    caplog.set_level(level, logger="pollhook.deliver")
    _log_delivered(BATCH)
    return [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]


def test_a_burst_is_one_line_and_a_single_delivery_keeps_its_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert _run(caplog, logging.INFO) == [
        "subscriber=a delivered 3 webhooks",
        "subscriber=b event=evt_4 delivered (HTTP 204, 1ms)",
    ]


def test_debug_level_names_every_delivery(caplog: pytest.LogCaptureFixture) -> None:
    assert [line.split()[1] for line in _run(caplog, logging.DEBUG)] == [
        "event=evt_1", "event=evt_2", "event=evt_3", "event=evt_4",
    ]  # fmt: skip
