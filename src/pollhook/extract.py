"""Turn a fetched body into keyed items with canonical hashes (pure code).

The hash covers the item minus its `ignore` paths, serialised with sorted
keys by orjson (about 4x faster than json.dumps on 100k items), so a change
that only touches an ignored field never becomes an event.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from functools import lru_cache, partial
from operator import itemgetter
from typing import Any, NamedTuple

import jmespath
import jmespath.exceptions
import jmespath.parser
import orjson

from .errors import ExtractError

BOM = b"\xef\xbb\xbf"
NO_LIMIT = 2**63
# orjson keeps integers in [-2**63, 2**64 - 1] exact (beyond, it returns a float): the
# shortest number tokens that may not fit are 20 digits, or a minus and 19. With digits and
# "-" all mapped to "0" such a token is a run of 20 "0"s; the regex then checks that a run
# is a number token (a value, or the whole body), not digits inside a string.
_NUMERALS = bytes.maketrans(b"-0123456789", b"0" * 11)
_NUMERAL_RUN = b"0" * 20
_LONG_NUMBER = re.compile(rb"(?:\A|[\[:,])\s*(?:-\d{19}|\d{20})")


class Item(NamedTuple):
    """One upstream item: its identity, the hash change detection uses, its value.

    A named tuple rather than a frozen dataclass: the dataclass's __init__
    (three object.__setattr__ calls) took 57 ms per 100k items, `new_item`
    builds a named tuple, without any Python-level call, in half that.

    `value` is the item's JSON value, or its compact JSON text as `bytes` when
    a parsing worker read the body (parsing.py): only the few changed items
    are ever decoded (`value_of`), and the text is what the store keeps anyway.
    """

    key: str
    hash: str
    value: Any


new_item = partial(tuple.__new__, Item)  # new_item((key, hash, value)): no Python-level call


@lru_cache(maxsize=512)
def compiled(expression: str) -> jmespath.parser.ParsedResult:
    """JMESPath expressions are compiled once per process, not once per item."""
    return jmespath.compile(expression)


def parse_json(body: bytes) -> Any:
    """Parse a JSON body; anything else is an ExtractError, never a diff.

    orjson silently turns integers beyond 64 bits into floats, which would
    merge distinct keys and hide changes in their last digits. A body that may
    hold one is parsed again exactly; an item that contains one then fails
    the poll in `extract_items` (nothing downstream can carry it), while one
    elsewhere in the body is harmless.
    """
    if body.startswith(BOM):  # legacy servers send one; RFC 8259 lets parsers skip it
        body = body[len(BOM) :]
    if not body or body.isspace():
        raise ExtractError("empty body where JSON was expected")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ExtractError(f"body is not valid JSON: {exc}") from None
    if may_hold_long_integer(body):
        try:
            document = json.loads(body)
        except RecursionError:
            raise ExtractError("body is nested too deeply to parse exactly") from None
    return document


def may_hold_long_integer(body: bytes) -> bool:
    """Whether `body` has a number token orjson may not keep exact (false alarms are safe).

    The regex alone scanned a 19 MB body in 0.10 s, more than orjson parses it
    in; the translated copy (0.014 s) rules out nearly every body first, and
    only a body with a long run of digits pays for the regex.
    """
    return _NUMERAL_RUN in body.translate(_NUMERALS) and _LONG_NUMBER.search(body) is not None


def canonical_hash(value: Any) -> str:
    """Stable digest of a JSON value: equal data gives an equal hash."""
    return hashlib.blake2b(_dumps(value, orjson.OPT_SORT_KEYS), digest_size=16).hexdigest()


def stored_json(value: Any) -> bytes:
    """JSON bytes to keep around (item bodies, event bodies); an Item's JSON text as it is.

    orjson's result keeps its 4 KB working buffer: 100k kept bodies of ~100
    bytes held ~400 MB. An exact-size copy costs ~0.3 µs and holds ~100 bytes.
    """
    if isinstance(value, bytes):
        return value
    return bytes(memoryview(orjson.dumps(value)))


def value_of(value: Any) -> Any:
    """An Item's value as JSON data (decoding the text a parsing worker sent)."""
    return orjson.loads(value) if isinstance(value, bytes) else value


def _too_big(size: int, limit: int) -> bool:
    raise ExtractError(f"an item of {size} bytes exceeds max_item_size {limit}")


def _dumps(value: Any, option: int = 0) -> bytes:
    try:
        return orjson.dumps(value, option=option)
    except TypeError as exc:  # orjson.JSONEncodeError: integers beyond 64 bits
        if "64-bit" in str(exc):
            raise ExtractError("an integer beyond 64 bits cannot be carried exactly") from None
        raise ExtractError(f"item cannot be serialised: {exc}") from None


def without_paths(value: Any, paths: tuple[str, ...]) -> Any:
    """A copy of `value` with each dotted field path removed (copy-on-write)."""
    for path in paths:
        value = _drop(value, path.split("."))
    return value


def only_paths(value: Any, paths: tuple[str, ...]) -> list[Any]:
    """The values `without_paths` would remove, in path order (missing ones left out)."""
    found = []
    for path in paths:
        part = value
        for name in path.split("."):
            if not isinstance(part, dict) or name not in part:
                break
            part = part[name]
        else:
            found.append(part)
    return found


def _drop(value: Any, parts: list[str]) -> Any:
    if not isinstance(value, dict) or parts[0] not in value:
        return value
    copy = dict(value)
    if len(parts) == 1:
        del copy[parts[0]]
    else:
        copy[parts[0]] = _drop(copy[parts[0]], parts[1:])
    return copy


def key_text(value: Any) -> str:
    """An item's identity as the string the wire format carries."""
    if isinstance(value, bool) or value is None or isinstance(value, dict | list):
        raise ValueError(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def json_text(value: Any, limit: int = 80) -> str:
    """A value as JSON text for an error message, shortened."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_JSON_TYPES = {
    dict: "an object",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
}


def search(expression: str, document: Any) -> Any:
    try:
        return _getter(expression)(document)
    except jmespath.exceptions.JMESPathError as exc:
        raise ExtractError(f"JMESPath {expression!r} failed: {exc}") from None


@lru_cache(maxsize=512)
def _getter(expression: str) -> Callable[[Any], Any]:
    """A plain field path (`id`, `data.items`, `@`) as direct dict lookups.

    Keys are usually such paths and are evaluated once per item: the general
    JMESPath interpreter spent 5 µs per item on them (0.5 s per 100k items).
    The result is the same as JMESPath's: None where a step is not an object.
    """
    path = _field_chain(dict(compiled(expression).parsed))
    if path is None:
        return compiled(expression).search

    def get(document: Any) -> Any:
        for name in path:
            if not isinstance(document, dict):
                return None
            document = document.get(name)
        return document

    return get


def _field_chain(node: dict[str, Any]) -> list[str] | None:
    if node["type"] == "current":
        return []
    if node["type"] == "field":
        return [node["value"]]
    if node["type"] == "subexpression":
        parts = [_field_chain(child) for child in node["children"]]
        if all(p is not None for p in parts):
            return [name for p in parts if p is not None for name in p]
    return None


def extract_items(
    document: Any, items: str, key: str, ignore: tuple[str, ...], *,
    max_items: int | None = None, max_item_size: int | None = None,
) -> dict[str, Item]:  # fmt: skip
    """Items by key, in upstream order; a missing list or a bad/duplicate key fails the poll.

    More than `max_items` items, or one whose JSON is over `max_item_size`
    bytes, fail it too: an upstream must not decide how much one poll holds
    or how large a webhook gets.
    """
    found = search(items, document)
    if not isinstance(found, list):
        what = "nothing" if found is None else _JSON_TYPES.get(type(found), type(found).__name__)
        raise ExtractError(f"items {items!r} matched {what}, not a list")
    if max_items is not None and len(found) > max_items:
        raise ExtractError(
            f"{len(found)} items exceed max_items {max_items} (raise it if the source has that many)"
        )
    limit = max_item_size or NO_LIMIT
    field = _plain_field(key)
    if field is not None:
        fast = _field_keyed_items(found, field, ignore, limit)
        if fast is not None:
            return fast
    return _checked_items(found, key, ignore, limit)


@lru_cache(maxsize=512)
def _plain_field(expression: str) -> str | None:
    """The field name of a one-step key like `id`, else None."""
    path = _field_chain(dict(compiled(expression).parsed))
    return path[0] if path is not None and len(path) == 1 else None


def _field_keyed_items(
    found: list[Any], field: str, ignore: tuple[str, ...], limit: int = NO_LIMIT
) -> dict[str, Item] | None:
    """The usual case (object items, a str or int key in one field) at C speed, else None.

    None hands anything unusual (a missing or odd key, a duplicate, a value that
    does not serialise) to `_checked_items`, which finds and reports it: this path
    never raises and never decides an error. Beyond the hashes themselves, an
    item costs a dict lookup and the Item: 100k new Items are GC-tracked objects,
    enough to set off one full collection per large poll (a quarter of the time).
    """
    try:
        keys = list(map(itemgetter(field), found))
    except (KeyError, TypeError):  # an item without the field, or not an object
        return None
    kinds = set(map(type, keys))
    if not kinds <= {str, int}:  # bool, float, None, containers: key_text's cases
        return None
    try:
        if kinds != {str}:
            keys = list(map(str, keys))
        if ignore:
            hashes = [sized_hash(value, ignore, limit) for value in found]
        else:
            dumps, blake2b = partial(orjson.dumps, option=orjson.OPT_SORT_KEYS), hashlib.blake2b
            hashes = [
                blake2b(text, digest_size=16).hexdigest()
                for text in map(dumps, found)
                if len(text) <= limit or _too_big(len(text), limit)
            ]
    except (TypeError, ValueError, ExtractError):  # orjson.JSONEncodeError is a TypeError
        return None
    items = map(new_item, zip(keys, hashes, found, strict=True))
    result = dict(zip(keys, items, strict=True))
    return result if len(result) == len(found) else None  # shorter: a duplicate key


def sized_hash(value: Any, ignore: tuple[str, ...], limit: int) -> str:
    """The hash without `ignore`; what it skipped must still serialise, and counts in the size.

    Over `limit` bytes in all is an ExtractError (max_item_size).
    """
    text = _dumps(without_paths(value, ignore), orjson.OPT_SORT_KEYS)
    size = len(text) + (len(_dumps(only_paths(value, ignore))) if ignore else 0)
    if size > limit:
        _too_big(size, limit)
    return hashlib.blake2b(text, digest_size=16).hexdigest()


def _checked_items(
    found: list[Any], key: str, ignore: tuple[str, ...], limit: int = NO_LIMIT
) -> dict[str, Item]:
    """Any key expression, item by item, naming the first bad item in the error."""
    result: dict[str, Item] = {}
    for index, value in enumerate(found):
        raw_key = search(key, value)
        try:
            item_key = key_text(raw_key)
        except ValueError:
            raise ExtractError(
                f"item {index}: key {key!r} gave {json_text(raw_key)}, not a string or number"
            ) from None
        if item_key in result:
            raise ExtractError(f"duplicate key {item_key!r} in one response (item {index})")
        try:
            digest = sized_hash(value, ignore, limit)
        except ExtractError as exc:
            raise ExtractError(f"item {index} (key {item_key!r}): {exc}") from None
        result[item_key] = Item(item_key, digest, value)
    return result
