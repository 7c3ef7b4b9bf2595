"""When an upstream's ETag and Last-Modified may be trusted, and when they may not.

A conditional request (If-None-Match / If-Modified-Since) is only as good as
the validators it sends back, and ordinary servers get them wrong in ways that
hide changes: nginx and Python's http.server derive them from a file's mtime
at one-second resolution, some APIs send one ETag forever, some answer 304 to
anything. So that a change that stays upstream for two intervals is always
detected, pollhook follows four rules (pure functions here; poll.py applies
them, store.py keeps `trust` and `full_at` per source):

1. RFC 9110 §8.8.2.2: a Last-Modified less than one second before the
   response's Date (our clock when there is none) is weak. Neither it nor the
   ETag that came with it (nginx derives that from the same mtime) is kept, so
   the next request is unconditional.
2. Validators start unproven. An unproven source sends a conditional request
   only right after a poll that got a whole body, in the same process: never
   two in a row, never as a process's first poll, never while a deletion is
   held. Every second poll, at the latest, sees the body.
3. They are proven when a whole body shows new content under validators
   other than the stored ones (as received, even too fresh to be kept).
   A proven source sends conditional requests, and an unconditional one when
   its last whole body is CHECK_EVERY intervals old.
4. They lie when a whole body shows other items under the validator stored
   for the old ones: conditional requests stop for that source (a warning,
   once; `pollhook status --json` shows "lying") until it is re-baselined.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .retry import http_date

if TYPE_CHECKING:
    from .config import Source
    from .fetch import Fetched
    from .store import SourceState

PROVEN = "proven"
LYING = "lying"
CHECK_EVERY = 10  # intervals: even proven validators get an unconditional poll this often

Validators = tuple[str | None, str | None]  # (ETag, Last-Modified)
NONE: Validators = (None, None)


def to_send(source: Source, state: SourceState | None, full_last: bool, now: float) -> Validators:
    """The validators the next request sends: NONE makes it unconditional.

    `state` is the settled state (None re-baselines); `full_last` says whether
    this process's last poll of the source got a whole body.
    """
    if state is None or source.conditional == "never" or source.pagination is not None:
        return NONE  # an unchanged first page says nothing of the others
    stored = (state.etag, state.last_modified)
    if stored == NONE or state.trust == LYING:
        return NONE
    if state.trust == PROVEN:
        fresh = state.full_at is not None and now - state.full_at < CHECK_EVERY * source.interval
        return stored if fresh else NONE
    return stored if full_last and not state.held_deletes else NONE


def kept(fetched: Fetched, received_at: float) -> Validators:
    """The validators of a whole response worth storing: NONE when Last-Modified is weak."""
    etag, modified = fetched.etag, fetched.last_modified
    if modified is None:
        return etag, None
    at = http_date(modified)
    if at is None:
        return etag, None  # a date we cannot read is not sent back either
    date = http_date(fetched.date) if fetched.date else None
    if (received_at if date is None else date) - at < 1.0:
        return NONE  # modified within the second: a second write may keep both validators
    return etag, modified


def judge(
    trust: str | None, stored: Validators, new: Validators, body_changed: bool,
    items_changed: bool,
) -> str | None:  # fmt: skip
    """The source's trust after a whole body, given the validators stored before it.

    Only comparable validators count as evidence: none stored (a first poll,
    a weak Last-Modified) or none sent proves nothing either way.
    """
    if trust == LYING:
        return LYING
    before, after = _identity(stored), _identity(new)
    if before is None or after is None:
        return trust
    if before == after:
        return LYING if items_changed else trust
    return PROVEN if body_changed else trust


def _identity(validators: Validators) -> str | None:
    """What a server compares: the ETag (weakly, RFC 9110 §8.8.3.2) if any, else the date."""
    etag, modified = validators
    if etag:
        return "etag " + etag.removeprefix("W/")
    return f"date {modified}" if modified else None
