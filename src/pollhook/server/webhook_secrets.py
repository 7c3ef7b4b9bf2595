"""Signing secrets of API subscriptions: made here, rotated with a 24-hour overlap.

During the overlap every webhook carries one signature per secret
(`webhook-signature: v1,<new> v1,<old>`), as Standard Webhooks allows, so
a receiver verifies with either until it has switched.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

PREFIX = "whsec_"
KEY_BYTES = 32
OVERLAP = 24 * 3600  # seconds the previous secret keeps signing after a rotation


def new_secret() -> str:
    """`whsec_` + base64 of 32 random bytes, the form Standard Webhooks libraries read."""
    return PREFIX + base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


@dataclass(frozen=True)
class StoredSecret:
    """One secret of a subscription; `retires_at` is None for the current one."""

    secret: str = field(repr=False)
    retires_at: float | None = None


def signing_secrets(stored: Sequence[StoredSecret], now: float) -> list[str]:
    """The secrets to sign with at `now`: the current one first, then those still overlapping."""
    current = [s.secret for s in stored if s.retires_at is None]
    return current + [s.secret for s in stored if s.retires_at is not None and s.retires_at > now]


def rotate(
    stored: Sequence[StoredSecret], now: float, secret: str | None = None
) -> tuple[str, list[StoredSecret]]:
    """A new current secret, and the secrets to store: the new one and the old one until
    `now + OVERLAP`.

    At most one old secret keeps signing: rotating again within the overlap
    retires the older one at once (a receiver two rotations behind has had its
    chance), so the signature header never grows with repeated rotations.
    """
    fresh = secret or new_secret()
    kept = [StoredSecret(fresh)]
    kept += [StoredSecret(s.secret, now + OVERLAP) for s in stored if s.retires_at is None]
    return fresh, kept
