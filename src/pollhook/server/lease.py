"""Subscription states and leases, as pure functions of an injected `now`.

A subscription is `pending` until its callback proves intent, then `active`
for its lease; it delivers only while active and inside the lease. As in
WebSub, the lease starts when a verification passes, a renewal is another
verification that restarts it, and the hub may grant less than was asked.
"""

from __future__ import annotations

from enum import StrEnum

DEFAULT_LEASE = 10 * 86_400  # WebSub's customary default
MAX_LEASE = 30 * 86_400  # a URL nobody renews stops receiving within a month


class Status(StrEnum):
    PENDING = "pending"  # created; the callback has not proved intent yet
    ACTIVE = "active"  # verified; delivers until the lease ends
    FAILED = "failed"  # the first verification failed; never delivered
    EXPIRED = "expired"  # the lease ran out
    GONE = "gone"  # the callback answered 410 Gone


def grant_lease(requested: int | None) -> int:
    """The lease pollhook grants for a request: the default, or the request up to MAX_LEASE."""
    return DEFAULT_LEASE if requested is None else max(1, min(requested, MAX_LEASE))


def lease_ends_at(verified_at: float, lease_seconds: int) -> float:
    """When a lease granted by a verification at `verified_at` runs out."""
    return verified_at + lease_seconds


def after_verification(current: Status, verified: bool) -> Status:
    """The state after a verification: a failed renewal leaves a running lease alone."""
    if verified:
        return Status.ACTIVE
    return Status.FAILED if current is Status.PENDING else current


def status_at(stored: Status, ends_at: float | None, now: float) -> Status:
    """The state as seen at `now`: an active subscription whose lease ran out is expired."""
    if stored is Status.ACTIVE and (ends_at is None or now >= ends_at):
        return Status.EXPIRED
    return stored


def delivers(stored: Status, ends_at: float | None, now: float) -> bool:
    """Whether events are delivered to the subscription at `now`."""
    return status_at(stored, ends_at, now) is Status.ACTIVE
