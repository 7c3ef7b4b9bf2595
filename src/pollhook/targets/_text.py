"""Measuring and cutting text to a service's limit without breaking it.

Services count differently (Discord and Slack in characters, Teams and Google
Chat in bytes of the JSON body, ntfy in UTF-8 bytes), so a limit comes with
its own cost function. A cut never splits a character (Python strings are
code points), never leaves a combining mark or zero-width joiner without what
it joins, never splits an escape the caller names (Slack's `&amp;`), and says
how much was cut: "… (N more characters)".
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Any

import orjson

Cost = Callable[[str], int]
Backoff = Callable[[str], int]

ELLIPSIS = "…"
_MORE_RE = re.compile(r"… \(([\d,]+) more characters\)\Z")
_JOINERS = frozenset("\u200d\ufe0e\ufe0f")  # zero-width joiner, variation selectors


def utf16_units(text: str) -> int:
    """Length as JavaScript counts it: at least the number of code points, never less."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def utf8_bytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def json_bytes(text: str) -> int:
    """Bytes the string takes inside a UTF-8 JSON body, quotes included."""
    return len(orjson.dumps(text))


def more_suffix(count: int) -> str:
    return f"{ELLIPSIS} ({count:,} more characters)"


def fit(
    text: str,
    limit: int,
    cost: Cost = len,
    backoff: Backoff | None = None,
    shown: Cost = len,
) -> str:
    """`text` if it costs at most `limit`, else its longest safe prefix and a "more" note.

    `shown` counts characters as the reader sees them (Slack shows `&amp;` as
    one), for the note. The search is a bisection over prefix lengths, so a
    10 MB value costs a few dozen measurements of its prefixes, not one per
    character.
    """
    if cost(text) <= limit:
        return text
    hidden = 0  # characters an earlier cut already left out (a `text:` line over its cap)
    earlier = _MORE_RE.search(text)
    if earlier:
        hidden = int(earlier.group(1).replace(",", ""))
        text = text[: earlier.start()]
    budget = limit - cost(more_suffix(len(text) + hidden))
    low, high = 0, len(text)
    while low < high:  # the longest prefix that fits the budget
        middle = (low + high + 1) // 2
        if cost(text[:middle]) <= budget:
            low = middle
        else:
            high = middle - 1
    cut = _safe_cut(text, low)
    if backoff is not None:
        cut = backoff(text[:cut])
    head = text[:cut].rstrip()
    if budget <= 0:
        return ""
    return head + more_suffix(shown(text) - shown(head) + hidden)


def _safe_cut(text: str, cut: int) -> int:
    """Step back so no combining mark or joiner is separated from its base."""
    while 0 < cut < len(text) and (
        unicodedata.combining(text[cut]) or text[cut] in _JOINERS or text[cut - 1] == "\u200d"
    ):
        cut -= 1
    return cut


def shorten(value: Any, width: int = 60) -> str:
    """A value as a reader wants it in one line: strings bare, the rest as compact JSON."""
    if isinstance(value, str):
        text = value if value.strip() else orjson.dumps(value).decode()
    else:
        try:
            text = orjson.dumps(value).decode()
        except TypeError:  # a value stored JSON cannot hold; show what Python sees
            text = repr(value)
    head = text[: width * 4]
    line = " ".join(head.split())  # newlines and runs of spaces read as one
    if len(line) <= width and len(head) == len(text):
        return line
    return line[: _safe_cut(line, min(len(line), width - 1))] + ELLIPSIS
