"""extract: body → keyed items with canonical hashes (table-driven, pure code)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pollhook.errors import ExtractError, SourceError
from pollhook.extract import (
    _checked_items,
    canonical_hash,
    extract_items,
    may_hold_long_integer,
    parse_json,
    search,
    without_paths,
)

CASES = yaml.safe_load((Path(__file__).parent / "cases" / "extract.yaml").read_text("utf-8"))


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    document = parse_json(case["body"].encode("utf-8"))
    return extract_items(document, case["items"], case["key"], tuple(case.get("ignore", ())))


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_extract_case(case: dict[str, Any]) -> None:
    assert ("keys" in case) != ("error" in case), "a case expects either keys or an error"
    if "error" in case:
        with pytest.raises(ExtractError) as caught:
            run_case(case)
        assert case["error"] in str(caught.value)
    else:
        items = run_case(case)
        assert list(items) == case["keys"]
        assert [item.key for item in items.values()] == case["keys"]


def test_extract_error_fails_the_poll() -> None:
    """An ExtractError is a SourceError: the poll records nothing."""
    assert issubclass(ExtractError, SourceError)


@pytest.mark.parametrize(
    "body",
    [b"\xff\xfe[]", b'[{"id": "\xc3"}]', b"\x00", b"[1,]", b"{'id': 1}", b"[] []"],
    ids=["utf16-bom", "bad-utf8", "nul", "trailing-comma", "single-quotes", "two-documents"],
)
def test_invalid_bodies(body: bytes) -> None:
    with pytest.raises(ExtractError, match="not valid JSON"):
        parse_json(body)


# -- integers beyond what orjson keeps exact ---------------------------------------

# orjson keeps [-2**63, 2**64 - 1] exact and returns a float beyond
EDGE_INTEGERS = [2**64 - 1, 2**64, 10**19, 10**19 - 1, 10**20, -(2**63), -(2**63) - 1,
                 -(10**18) + 1, -(10**18), 2**53 + 1, 10**30, -(10**30)]  # fmt: skip


@pytest.mark.parametrize("number", EDGE_INTEGERS)
@pytest.mark.parametrize("template", ["[{}]", '{{"a": {}}}', "[1,\n\t {} ]", "{}", " {}\n"])
def test_integers_parse_exactly(number: int, template: str) -> None:
    body = template.format(number).encode()
    assert repr(parse_json(body)) == repr(json.loads(body))


JSON_NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70), st.sampled_from(EDGE_INTEGERS),
    st.floats(allow_nan=False, allow_infinity=False),
)  # fmt: skip
DIGIT_TEXT = st.text(alphabet="0123456789-:,[ .e", max_size=45)  # digit runs inside strings
JSON_DOCS = st.recursive(
    st.one_of(JSON_NUMBERS, DIGIT_TEXT, st.booleans(), st.none()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(DIGIT_TEXT, inner, max_size=4)
    ),
    max_leaves=15,
)


@settings(max_examples=300, deadline=None, database=None)
@given(document=JSON_DOCS, indent=st.sampled_from([None, 1]))
def test_parse_json_is_as_exact_as_the_stdlib(document: Any, indent: int | None) -> None:
    """Every number comes back as json.loads reads it: no integer silently turns float."""
    body = json.dumps(document, indent=indent).encode()
    assert repr(parse_json(body)) == repr(json.loads(body))


@pytest.mark.parametrize(
    "body",
    [b'{"id": "12345678901234567890123"}', b'["-1234567890123456789"]', b'{"n": 9999999999999999999}',
     b'{"n": -999999999999999999}', b'{"t": 1.00000000000000000001}', b'{"t": 1e00000000000000000001}'],
)  # fmt: skip
def test_long_digit_runs_that_are_not_long_integers_skip_the_exact_parse(body: bytes) -> None:
    """Long ids in strings, and integers orjson keeps exact, do not pay for a second parse."""
    assert not may_hold_long_integer(body)


# -- the fast path for a plain field key agrees with the item-by-item loop -----------

KEYS = st.one_of(
    st.integers(-3, 3), st.sampled_from(["a", "b", "1", "", 2**64, -(2**63)]), st.none(),
    st.booleans(), st.floats(-2, 2), st.lists(st.integers(0, 1), max_size=1),
    st.dictionaries(st.just("x"), st.integers(0, 1), max_size=1),
)  # fmt: skip
ITEMS = st.lists(
    st.one_of(
        st.fixed_dictionaries({"id": KEYS}, optional={"n": JSON_NUMBERS, "meta": JSON_DOCS}),
        st.fixed_dictionaries({}, optional={"other": KEYS}),
        JSON_NUMBERS, DIGIT_TEXT, st.lists(KEYS, max_size=2), st.none(),
    ),
    max_size=6,
)  # fmt: skip


def _outcome(extract: Any) -> Any:
    try:
        return extract()
    except ExtractError as exc:
        return str(exc)


@settings(max_examples=400, deadline=None, database=None)
@given(items=ITEMS, ignore=st.sampled_from([(), ("meta",), ("meta.a", "n"), ("id",)]))
def test_field_key_fast_path_agrees_with_the_item_by_item_loop(
    items: list[Any], ignore: tuple[str, ...]
) -> None:
    """Same items, hashes and values, or the same error naming the same item."""
    document = parse_json(json.dumps(items).encode())
    fast = _outcome(lambda: extract_items(document, "@", "id", ignore))
    assert fast == _outcome(lambda: _checked_items(document, "id", ignore))


def test_item_value_is_the_parsed_item() -> None:
    body = b'{"data": [{"id": 42, "status": "open", "tags": ["a"]}]}'
    items = extract_items(parse_json(body), "data", "id", ("status",))
    assert items["42"].value == {"id": 42, "status": "open", "tags": ["a"]}


# -- canonical hashing --------------------------------------------------------

SAME = [
    ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
    ({"x": {"p": 1, "q": [1, {"m": 1, "n": 2}]}}, {"x": {"q": [1, {"n": 2, "m": 1}], "p": 1}}),
    ({"s": "ü"}, {"s": "\u00fc"}),
]

DIFFERENT = [
    ({"a": 1}, {"a": 2}),
    ({"a": 1}, {"a": "1"}),
    ({"a": 1}, {"a": True}),
    ({"a": 0}, {"a": False}),
    ({"a": None}, {}),
    ({"a": [1, 2]}, {"a": [2, 1]}),
    ({"a": {"b": 1}}, {"a": {"b": 1, "c": None}}),
    ({"a": 1, "b": 2}, {"a": 2, "b": 1}),
]


@pytest.mark.parametrize(("left", "right"), SAME)
def test_hash_ignores_key_order(left: Any, right: Any) -> None:
    assert canonical_hash(left) == canonical_hash(right)


@pytest.mark.parametrize(("left", "right"), DIFFERENT)
def test_hash_sees_real_differences(left: Any, right: Any) -> None:
    assert canonical_hash(left) != canonical_hash(right)


def test_hash_of_parsed_bodies_ignores_key_order() -> None:
    left = parse_json(b'[{"id": 1, "a": {"x": 1, "y": 2}, "b": 3}]')
    right = parse_json(b'[{"b": 3, "a": {"y": 2, "x": 1}, "id": 1}]')
    assert (
        extract_items(left, "@", "id", ())["1"].hash
        == extract_items(right, "@", "id", ())["1"].hash
    )


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, {"a": [1, 10**30]}])
def test_hash_of_integer_beyond_64_bits_is_a_clean_error(value: Any) -> None:
    with pytest.raises(ExtractError):
        canonical_hash(value)


# -- ignore paths -------------------------------------------------------------

ITEM = {"id": 1, "status": "open", "updated_at": "t1", "meta": {"etag": "e1", "owner": "ann"}}

IGNORE = [
    # (ignore paths, a change to the item, whether the hash must stay the same)
    (("updated_at",), {"updated_at": "t2"}, True),
    (("updated_at",), {"status": "closed"}, False),
    (("updated_at",), {"updated_at": "t2", "status": "closed"}, False),
    (("meta.etag",), {"meta": {"etag": "e2", "owner": "ann"}}, True),
    (("meta.etag",), {"meta": {"etag": "e2", "owner": "bob"}}, False),
    (("meta.etag",), {"meta": {"owner": "ann"}}, True),
    (("meta",), {"meta": {"etag": "e2", "owner": "bob"}}, True),
    (
        ("updated_at", "meta.etag"),
        {"updated_at": "t9", "meta": {"etag": "x", "owner": "ann"}},
        True,
    ),
    ((), {"updated_at": "t2"}, False),
    # a field appearing where an ignored one was missing is still ignored
    (("meta.extra",), {"meta": {"etag": "e1", "owner": "ann", "extra": 1}}, True),
]


@pytest.mark.parametrize(("ignore", "change", "same"), IGNORE)
def test_ignore_paths(ignore: tuple[str, ...], change: dict[str, Any], same: bool) -> None:
    before = extract_items([ITEM], "@", "id", ignore)["1"]
    after = extract_items([{**ITEM, **change}], "@", "id", ignore)["1"]
    assert (before.hash == after.hash) is same


@pytest.mark.parametrize(
    "paths",
    [("missing",), ("missing.deeper",), ("status.deeper",), ("meta.etag.deeper",), ("id.x.y",)],
)
def test_missing_ignore_paths_are_harmless(paths: tuple[str, ...]) -> None:
    assert without_paths(ITEM, paths) == ITEM
    assert extract_items([ITEM], "@", "id", paths)["1"].hash == canonical_hash(ITEM)


def test_ignore_does_not_mutate_the_item() -> None:
    item = copy.deepcopy(ITEM)
    stripped = without_paths(item, ("updated_at", "meta.etag"))
    assert stripped == {"id": 1, "status": "open", "meta": {"owner": "ann"}}
    assert item == ITEM
    items = extract_items([item], "@", "id", ("updated_at", "meta.etag"))
    assert items["1"].value == ITEM
    assert item == ITEM


def test_ignore_applies_to_non_object_items_harmlessly() -> None:
    items = extract_items(["a", "b"], "@", "@", ("updated_at",))
    assert items["a"].hash == canonical_hash("a")


@pytest.mark.parametrize(
    ("expression", "document"),
    [
        ("id", {"id": 3}), ("id", {"ID": 3}), ("id", [1]), ("id", None), ("@", [1, 2]),
        ("a.b", {"a": {"b": 1}}), ("a.b", {"a": [1]}), ("a.b", {"a": "text"}),
        ("a.b.c", {"a": {"b": {"c": None}}}), ('"my-key"', {"my-key": 2}),
        ("a[0]", {"a": [5]}), ("length(@)", [1, 2]),
    ],
)  # fmt: skip
def test_field_path_fast_path_agrees_with_jmespath(expression: str, document: object) -> None:
    import jmespath

    assert search(expression, document) == jmespath.search(expression, document)
