"""Incremental mode's cursor: taken from a complete poll, sent back with an overlap (pure code).

A watermark alone loses or repeats items at its boundary (Airbyte, castorm):
the cursor sent is the stored one minus an overlap window, the items that
come back twice are de-duplicated by key and hash (unchanged → no event),
and the stored cursor never moves backwards. Cursors are stored as JSON so a
number stays a number.

Timestamps are compared as instants, not as text: `...:00.5Z` sorts after
`...:00Z` although '.' < 'Z'.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from .config import Source
from .errors import ExtractError
from .extract import Item, json_text, search, value_of

_FIELD_PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_INTEGER_RE = re.compile(r"^-?\d+$")
_FRACTION_RE = re.compile(r"T?\d{2}:?\d{2}:?\d{2}[.,](\d+)")


def since(source: Source, stored: str | None) -> str | None:
    """The value to send in `incremental.param`, or None to send no cursor at all."""
    incremental = source.incremental
    if incremental is None:
        return None
    if stored is None:
        initial = incremental.initial
        return None if initial is None else _render(initial)
    return _render(_minus(orjson.loads(stored), incremental.overlap))


def advance(source: Source, stored: str | None, items: Mapping[str, Item]) -> str | None:
    """The cursor to store after a complete poll: the greater of the stored and the new one.

    Raises ExtractError (the poll fails, nothing is written) when the items give
    a cursor that cannot be sent back, so a bad `cursor` shows on the first poll.
    """
    incremental = source.incremental
    if incremental is None:
        return None
    found = _from_items(incremental.cursor, [value_of(item.value) for item in items.values()])
    if found is None:
        return stored
    if isinstance(found, bool) or not isinstance(found, str | int | float):
        raise ExtractError(
            f"incremental cursor {incremental.cursor!r} gave {json_text(found)},"
            " not a string or number"
        )
    _minus(found, incremental.overlap)  # fail now if the overlap cannot apply to it
    old = orjson.loads(stored) if stored is not None else None
    if old is not None and _comparable(old, found) and _order(found) <= _order(old):
        return stored  # never backwards; an equal instant keeps the stored text
    return orjson.dumps(found).decode()


def _from_items(expression: str, values: list[Any]) -> Any:
    if not values:
        return None
    if _FIELD_PATH_RE.match(expression):  # a field: its greatest value over the items
        found = [
            value for value in (search(expression, item) for item in values) if value is not None
        ]
        for value in found:
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise ExtractError(
                    f"incremental cursor {expression!r} gave {json_text(value)},"
                    " not a string or number"
                )
        kinds = {_order(value)[0] for value in found}
        if len(kinds) > 1:
            raise ExtractError(f"incremental cursor {expression!r} mixes numbers, dates and text")
        return max(found, key=_order) if found else None
    return search(expression, values)


def _order(value: Any) -> tuple[int, Any]:
    """A sort key: numbers, then instants, then other text; only equal kinds compare."""
    if isinstance(value, int | float):
        return (0, value)
    if _INTEGER_RE.match(value):
        return (0, int(value))
    moment = _timestamp(value)
    if moment is not None:
        return (1, moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    return (2, value)


def _comparable(left: Any, right: Any) -> bool:
    if isinstance(left, bool) or not isinstance(left, str | int | float):
        return False
    return _order(left)[0] == _order(right)[0]


def _timestamp(text: str) -> datetime | None:
    if len(text) < 10 or not text[:4].isdigit():
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _minus(value: Any, overlap: float) -> Any:
    """`value` moved back by `overlap`, in the same form (number, digits, or ISO 8601 text)."""
    overlap = float(overlap)
    if overlap == 0:
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, int) and overlap.is_integer():
            return value - int(overlap)
        return value - overlap
    if isinstance(value, str) and _INTEGER_RE.match(value) and overlap.is_integer():
        moved = str(int(value) - int(overlap))
        return moved.zfill(len(value)) if value.startswith("0") else moved  # keep "00123" wide
    moment = _timestamp(value) if isinstance(value, str) else None
    if moment is None:
        raise ExtractError(
            f"incremental cursor {json_text(value)} is neither a number nor an ISO 8601"
            " timestamp, so 'overlap' cannot move it back"
        )
    return _format_like(value, moment - timedelta(seconds=overlap))


def _format_like(original: str, moment: datetime) -> str:
    """ISO 8601 text shaped like `original`: date only, separator, fraction digits, 'Z'."""
    if len(original) == 10:
        return moment.date().isoformat()
    fraction = _FRACTION_RE.search(original)
    digits = len(fraction.group(1)) if fraction else 0
    timespec = "seconds" if digits == 0 else "milliseconds" if digits <= 3 else "microseconds"
    text = moment.isoformat(sep=original[10], timespec=timespec)
    if original.endswith(("Z", "z")) and text.endswith("+00:00"):
        text = text[: -len("+00:00")] + "Z"
    return text


def _render(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
