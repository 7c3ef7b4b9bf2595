"""The readable line each preset sends by default, one per event.

`tickets 42 updated: status open → closed`: the headline names the item and
what happened; the detail shows a few changed fields from the RFC 6902
`changes` (old value from `previous`), the first lines of a text `diff`, or a
health event's error. Values are shortened, so a 10 MB field costs a short
line. A digest reads "12 changes in tickets" over the first ten lines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._text import shorten

MAX_CHANGES = 3  # fields named in one line; the rest are counted
MAX_DIFF_LINES = 2
DIGEST_LISTED = 10
_NAME_FIELDS = ("title", "name", "summary", "subject")  # what a person calls an item
_ACTIONS = {"item.created": "created", "item.updated": "updated", "item.deleted": "deleted"}
_CHANGE_TYPES = frozenset({*_ACTIONS, "document.changed"})
Envelope = Mapping[str, Any]


def headline(event: Envelope) -> str:
    """What happened to what, in a few words: also the title of ntfy and Apprise messages."""
    kind = event.get("type", "")
    data = _data(event)
    source = str(data.get("source", "?"))
    if kind in _ACTIONS:
        return f"{source} {data.get('key', '?')} {_ACTIONS[kind]}"
    if kind == "document.changed":
        return f"{source} changed"
    if kind in ("source.failing", "source.recovered"):
        return f"source {source} {kind.removeprefix('source.')}"
    if kind == "pollhook.test":
        return "pollhook test message"
    return f"{source} {data.get('key', '')} {kind}".replace("  ", " ")


def line(event: Envelope) -> str:
    """The default message for one event: the headline and, when there is one, detail."""
    detail = _detail(event)
    return f"{headline(event)}: {detail}" if detail else headline(event)


def digest_title(events: Sequence[Envelope]) -> str:
    """`12 changes in tickets`, or `3 events in a, b` when health events are among them."""
    count = len(events)
    sources = sorted({str(_data(e).get("source", "?")) for e in events})
    changes = all(e.get("type") in _CHANGE_TYPES for e in events)
    noun = ("change" if changes else "event") + ("" if count == 1 else "s")
    return f"{count} {noun} in {', '.join(sources)}"


def digest_more(count: int) -> str | None:
    """The last line of a digest listing only the first DIGEST_LISTED events."""
    hidden = count - DIGEST_LISTED
    return f"and {hidden} more" if hidden > 0 else None


def _data(event: Envelope) -> Mapping[str, Any]:
    data = event.get("data")
    return data if isinstance(data, Mapping) else {}


def _detail(event: Envelope) -> str:
    kind = event.get("type")
    data = _data(event)
    if kind == "source.failing":
        return shorten(data.get("error", "unknown error"), 200)
    if kind == "source.recovered":
        failures = data.get("failures")
        return f"after {failures} failed polls" if isinstance(failures, int) else ""
    if kind == "pollhook.test":
        return f"subscriber {data['subscriber']}" if data.get("subscriber") else ""
    if isinstance(data.get("diff"), str):
        return _diff_detail(data["diff"])
    if isinstance(data.get("changes"), list):
        return _changes_detail(data["changes"], data.get("previous"))
    if kind in ("item.created", "item.deleted"):
        return _name(data.get("item") if kind == "item.created" else data.get("previous"))
    return ""


def _name(item: Any) -> str:
    if not isinstance(item, Mapping):
        return ""
    for field in _NAME_FIELDS:
        if isinstance(item.get(field), str) and item[field].strip():
            return shorten(item[field])
    return ""


def _changes_detail(changes: list[Any], previous: Any) -> str:
    ops = [op for op in changes if isinstance(op, Mapping) and op.get("op") != "test"]
    shown = [_describe(op, previous) for op in ops[:MAX_CHANGES]]
    if len(ops) > MAX_CHANGES:
        shown.append(f"+{len(ops) - MAX_CHANGES} more")
    return ", ".join(shown)


def _describe(op: Mapping[str, Any], previous: Any) -> str:
    path = _path(str(op.get("path", "")))
    kind = op.get("op")
    if kind == "replace":
        old = _resolve(previous, str(op.get("path", "")))
        return f"{path} {shorten(old, 40)} → {shorten(op.get('value'), 40)}"
    if kind == "add":
        return f"{path} added: {shorten(op.get('value'), 40)}"
    if kind == "remove":
        old = _resolve(previous, str(op.get("path", "")))
        return f"{path} removed (was {shorten(old, 40)})"
    if kind in ("move", "copy"):
        return f"{path} {kind}d from {_path(str(op.get('from', '')))}"
    return f"{path} {kind}"


def _path(pointer: str) -> str:
    """`/items/0/name` as `items[0].name`; the whole document as `value`."""
    if not pointer:
        return "value"
    out = ""
    for part in pointer.lstrip("/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


def _resolve(document: Any, pointer: str) -> Any:
    """The value at an RFC 6901 pointer, or None when it is not there."""
    if not pointer:
        return document
    for part in pointer.lstrip("/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(document, Mapping):
            document = document.get(part)
        elif isinstance(document, list) and part.isdigit() and int(part) < len(document):
            document = document[int(part)]
        else:
            return None
    return document


def _diff_detail(diff: str) -> str:
    """The first changed lines of a unified diff: `-old text, +new text`."""
    changed = []
    in_hunk = False  # before the first @@ come the ---/+++ file headers
    for text in diff.splitlines():
        if text.startswith("@@"):
            in_hunk = True
        elif in_hunk and text[:1] in ("-", "+"):
            changed.append(text)
    shown = [t[0] + shorten(t[1:], 80) for t in changed[:MAX_DIFF_LINES]]
    if len(changed) > MAX_DIFF_LINES:
        hidden = len(changed) - MAX_DIFF_LINES
        shown.append(f"+{hidden} more line" + ("s" if hidden > 1 else ""))
    return ", ".join(shown)
