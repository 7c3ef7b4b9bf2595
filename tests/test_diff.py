"""diff: stored hashes vs a fresh poll, and the changes that become events."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pollhook.diff import Change, Delta, changes_for, compare
from pollhook.events import event_body
from pollhook.extract import Item, canonical_hash


def fresh_items(*pairs: tuple[str, str]) -> dict[str, Item]:
    """Items by key, in the given (upstream) order, with given hashes."""
    return {key: Item(key, digest, {"id": key, "h": digest}) for key, digest in pairs}


COMPARE = [
    # (name, stored {key: hash}, fresh [(key, hash)] in upstream order, created, updated, deleted)
    ("no change", {"1": "a", "2": "b"}, [("1", "a"), ("2", "b")], [], [], []),
    ("no change, upstream reordered", {"1": "a", "2": "b"}, [("2", "b"), ("1", "a")], [], [], []),
    ("nothing at all", {}, [], [], [], []),
    ("all new", {}, [("3", "c"), ("1", "a"), ("2", "b")], ["3", "1", "2"], [], []),
    ("all gone", {"2": "b", "1": "a", "3": "c"}, [], [], [], ["2", "1", "3"]),
    ("one updated", {"1": "a", "2": "b"}, [("1", "a"), ("2", "B")], [], ["2"], []),
    ("all updated", {"1": "a", "2": "b"}, [("2", "B"), ("1", "A")], [], ["2", "1"], []),
    (
        "mixed, each list in its order",
        {"1": "a", "2": "b", "3": "c", "4": "d", "5": "e"},
        [("9", "x"), ("3", "C"), ("1", "a"), ("8", "y"), ("5", "E")],
        ["9", "8"],
        ["3", "5"],
        ["2", "4"],
    ),
    ("replaced wholesale", {"1": "a"}, [("2", "a")], ["2"], [], ["1"]),
    # as many fresh keys as stored ones, yet one is gone: the deletion scan must still run
    ("one swapped for another", {"1": "a", "2": "b"}, [("1", "a"), ("3", "c")], ["3"], [], ["2"]),
    ("created and updated, none gone", {"1": "a"}, [("2", "b"), ("1", "A")], ["2"], ["1"], []),
]


@settings(max_examples=300, deadline=None, database=None)
@given(
    stored=st.dictionaries(st.sampled_from("abcdefgh"), st.sampled_from("xyz"), max_size=8),
    fresh=st.dictionaries(st.sampled_from("abcdefgh"), st.sampled_from("xyz"), max_size=8),
)
def test_compare_agrees_with_the_definition(stored: dict[str, str], fresh: dict[str, str]) -> None:
    delta = compare(stored, fresh_items(*fresh.items()))
    assert delta.created == [k for k in fresh if k not in stored]
    assert delta.updated == [k for k in fresh if k in stored and stored[k] != fresh[k]]
    assert delta.deleted == [k for k in stored if k not in fresh]


@pytest.mark.parametrize(
    ("stored", "fresh", "created", "updated", "deleted"),
    [case[1:] for case in COMPARE],
    ids=[case[0] for case in COMPARE],
)
def test_compare(
    stored: dict[str, str],
    fresh: list[tuple[str, str]],
    created: list[str],
    updated: list[str],
    deleted: list[str],
) -> None:
    delta = compare(stored, fresh_items(*fresh))
    assert (delta.created, delta.updated, delta.deleted) == (created, updated, deleted)
    assert bool(delta) is bool(created or updated or deleted)


def test_compare_uses_real_hashes() -> None:
    before = {"id": 1, "status": "open", "tags": ["a"]}
    stored = {"1": canonical_hash(before)}
    same = {"1": Item("1", canonical_hash({"tags": ["a"], "status": "open", "id": 1}), before)}
    assert not compare(stored, same)
    changed = {"1": Item("1", canonical_hash({**before, "status": "closed"}), before)}
    assert compare(stored, changed).updated == ["1"]


def test_empty_delta_is_falsy_and_fresh_each_time() -> None:
    assert not Delta()
    first = compare({}, fresh_items(("1", "a")))
    second = compare({}, {})
    assert first.created == ["1"] and second.created == []


# -- patches ------------------------------------------------------------------

PATCHES = [
    ("replace a field", {"id": 42, "status": "open"}, {"id": 42, "status": "closed"}),
    ("add a field", {"id": 1}, {"id": 1, "owner": "ann"}),
    ("remove a field", {"id": 1, "owner": "ann"}, {"id": 1}),
    ("set to null", {"id": 1, "owner": "ann"}, {"id": 1, "owner": None}),
    ("nested change", {"id": 1, "m": {"a": {"b": 1}}}, {"id": 1, "m": {"a": {"b": 2, "c": 3}}}),
    ("append to a list", {"id": 1, "t": ["a", "b"]}, {"id": 1, "t": ["a", "b", "c"]}),
    ("remove from the middle", {"id": 1, "t": ["a", "b", "c", "d"]}, {"id": 1, "t": ["a", "d"]}),
    ("reorder a list", {"id": 1, "t": [1, 2, 3, 4]}, {"id": 1, "t": [4, 3, 2, 1]}),
    ("list of objects", {"id": 1, "t": [{"n": 1}, {"n": 2}]}, {"id": 1, "t": [{"n": 2}, {"n": 3}]}),
    ("number to boolean", {"id": 1, "v": 1}, {"id": 1, "v": True}),
    ("zero to false", {"id": 1, "v": [0]}, {"id": 1, "v": [False]}),
    ("int to float", {"id": 1, "v": 1}, {"id": 1, "v": 1.5}),
    ("number to string", {"id": 1, "v": 1}, {"id": 1, "v": "1"}),
    ("object to list", {"id": 1, "v": {"a": 1}}, {"id": 1, "v": ["a", 1]}),
    ("keys needing escapes", {"id": 1, "a/b": 1, "c~d": 2}, {"id": 1, "a/b": 2, "c~d": 3, "~1": 0}),
    ("empty key", {"id": 1, "": 1}, {"id": 1, "": 2}),
    ("unicode", {"id": 1, "name": "Zoë"}, {"id": 1, "name": "Zoë 🎉"}),
    ("whole item replaced", {"id": 1, "a": 1, "b": 2}, {"id": 1, "c": 3}),
]


def exact(value: Any) -> bytes:
    """Equality that also tells 1, 1.0 and true apart (Python's == does not)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


@pytest.mark.parametrize(("before", "after"), [c[1:] for c in PATCHES], ids=[c[0] for c in PATCHES])
def test_update_patch_turns_previous_into_item(before: Any, after: Any) -> None:
    kept_before, kept_after = copy.deepcopy(before), copy.deepcopy(after)
    [change] = changes_for(Delta(updated=["k"]), {"k": Item("k", "h", after)}, {"k": before})
    assert change.type == "item.updated"
    assert change.changes, "an update always has a non-empty patch"
    patched = jsonpatch.apply_patch(before, change.changes)
    assert exact(patched) == exact(after)
    # the patch is plain JSON, and building it changed neither side
    assert exact(orjson.loads(orjson.dumps(change.changes))) == exact(change.changes)
    assert exact(before) == exact(kept_before) and exact(after) == exact(kept_after)


def test_contract_example_patch() -> None:
    before, after = {"id": 42, "status": "open"}, {"id": 42, "status": "closed"}
    [change] = changes_for(Delta(updated=["42"]), {"42": Item("42", "h", after)}, {"42": before})
    assert change.changes == [{"op": "replace", "path": "/status", "value": "closed"}]


def test_changes_for_order_and_values() -> None:
    fresh = {
        "n1": Item("n1", "h", {"id": "n1"}),
        "u1": Item("u1", "h", {"id": "u1", "v": 2}),
        "n2": Item("n2", "h", {"id": "n2"}),
        "u2": Item("u2", "h", {"id": "u2", "v": 3}),
    }
    previous = {
        "u1": {"id": "u1", "v": 1},
        "u2": {"id": "u2", "v": 1},
        "d1": {"id": "d1"},
        "d2": {"id": "d2"},
    }
    delta = Delta(created=["n2", "n1"], updated=["u2", "u1"], deleted=["d2", "d1"])
    changes = changes_for(delta, fresh, previous)
    assert [(c.type, c.key) for c in changes] == [
        ("item.created", "n2"),
        ("item.created", "n1"),
        ("item.updated", "u2"),
        ("item.updated", "u1"),
        ("item.deleted", "d2"),
        ("item.deleted", "d1"),
    ]
    by_key = {c.key: c for c in changes}
    assert (by_key["n1"].item, by_key["n1"].previous, by_key["n1"].changes) == (
        {"id": "n1"}, None, None,
    )  # fmt: skip
    assert (by_key["u1"].item, by_key["u1"].previous) == ({"id": "u1", "v": 2}, previous["u1"])
    assert (by_key["d1"].item, by_key["d1"].previous, by_key["d1"].changes) == (
        None, {"id": "d1"}, None,
    )  # fmt: skip


def test_no_delta_no_changes() -> None:
    assert changes_for(Delta(), {"1": Item("1", "h", {})}, {"1": {}}) == []


# -- the wire format's data object ---------------------------------------------

DATA = [
    (
        Change("item.created", "7", {"id": 7}, None),
        {"source": "tickets", "key": "7", "item": {"id": 7}, "previous": None},
    ),
    (
        Change("item.deleted", "7", None, {"id": 7}),
        {"source": "tickets", "key": "7", "item": None, "previous": {"id": 7}},
    ),
    (
        Change("item.updated", "7", {"id": 7, "v": 2}, {"id": 7, "v": 1},
               [{"op": "replace", "path": "/v", "value": 2}]),
        {"source": "tickets", "key": "7", "item": {"id": 7, "v": 2}, "previous": {"id": 7, "v": 1},
         "changes": [{"op": "replace", "path": "/v", "value": 2}]},
    ),
]  # fmt: skip


@pytest.mark.parametrize(("change", "expected"), DATA, ids=[c.type for c, _ in DATA])
def test_change_data_shape(change: Change, expected: dict[str, Any]) -> None:
    data = change.data("tickets")
    assert data == expected
    assert list(data) == list(expected), "field order as in CONTRACT.md"


def test_data_from_changes_for_has_changes_only_for_updates() -> None:
    fresh = {"a": Item("a", "h", {"id": "a"}), "b": Item("b", "h", {"id": "b", "v": 2})}
    previous = {"b": {"id": "b", "v": 1}, "c": {"id": "c"}}
    changes = changes_for(Delta(["a"], ["b"], ["c"]), fresh, previous)
    shapes = {c.type: set(c.data("s")) for c in changes}
    assert shapes == {
        "item.created": {"source", "key", "item", "previous"},
        "item.updated": {"source", "key", "item", "previous", "changes"},
        "item.deleted": {"source", "key", "item", "previous"},
    }


def test_contract_example_body() -> None:
    """The exact example body of CONTRACT.md, from a detected update."""
    before, after = {"id": 42, "status": "open"}, {"id": 42, "status": "closed"}
    [change] = changes_for(Delta(updated=["42"]), {"42": Item("42", "h", after)}, {"42": before})
    at = 1795795200.123  # 2026-11-27T16:00:00.123Z
    assert orjson.loads(event_body(change.type, at, change.data("tickets"))) == {
        "type": "item.updated",
        "timestamp": "2026-11-27T16:00:00.123Z",
        "data": {
            "source": "tickets",
            "key": "42",
            "item": {"id": 42, "status": "closed"},
            "previous": {"id": 42, "status": "open"},
            "changes": [{"op": "replace", "path": "/status", "value": "closed"}],
        },
    }


def test_changes_leave_out_ignored_paths_but_item_and_previous_stay_whole() -> None:
    before = {"id": 42, "status": "open", "updated_at": "10:00", "meta": {"etag": "a", "n": 1}}
    after = {"id": 42, "status": "closed", "updated_at": "11:00", "meta": {"etag": "b", "n": 1}}
    ignore = ("updated_at", "meta.etag")
    [change] = changes_for(
        Delta(updated=["42"]), {"42": Item("42", "h", after)}, {"42": before}, ignore
    )
    assert change.changes == [{"op": "replace", "path": "/status", "value": "closed"}]
    assert (change.item, change.previous) == (after, before)
    assert before["meta"] == {"etag": "a", "n": 1}  # nothing was removed from the values
