"""Human tables and JSON for the inspection commands.

Table cells show what upstreams and receivers chose (item keys, response
bodies, errors quoting headers), so each is passed through `redact.printable`:
a key holding an escape sequence or a newline shows as `\x1b` or `\n`
instead of clearing the screen or forging a row. JSON escapes them already.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from .redact import printable

Column = tuple[str, str, Callable[[Any], str] | None]


def when(value: float | None) -> str:
    """A stored Unix time as a short UTC timestamp."""
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> None:
    if not rows:
        print("(none)")
        return
    cells = [[title for title, _, _ in columns]]
    for row in rows:
        cells.append(
            [
                "-"
                if row.get(field) is None and fmt is None
                else printable((fmt or str)(row.get(field)))
                for _, field, fmt in columns
            ]
        )
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for line in cells:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )


def print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")


def print_rows(rows: Sequence[dict[str, Any]], columns: Sequence[Column], as_json: bool) -> None:
    """`--json` for scripts, an aligned table for people: every listing command's choice."""
    if as_json:
        print_json(rows)
    else:
        print_table(rows, columns)
