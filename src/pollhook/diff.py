"""Compare stored item hashes with a fresh poll (pure code).

`compare` only needs hashes, so the store loads full previous items only for
the keys that actually changed; `changes_for` then builds the events with an
RFC 6902 patch from the jsonpatch library (without the `ignore` paths).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonpatch

from .extract import Item, value_of, without_paths


@dataclass(frozen=True)
class Delta:
    """Which keys were created, updated and deleted by one complete poll."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.created or self.updated or self.deleted)


@dataclass(frozen=True)
class Change:
    """One detected change, ready to become an event."""

    type: str
    key: str
    item: Any
    previous: Any
    changes: list[dict[str, Any]] | None = None

    def data(self, source: str) -> dict[str, Any]:
        """The `data` object of the wire format."""
        data = {"source": source, "key": self.key, "item": self.item, "previous": self.previous}
        if self.changes is not None:
            data["changes"] = self.changes
        return data


def compare(stored: Mapping[str, str], fresh: Mapping[str, Item]) -> Delta:
    """Keys new, changed (by hash) and gone, in upstream order then stored order.

    One pass over `fresh` finds the few keys that differ; `stored` is scanned
    for deletions only when some stored key cannot be among the fresh ones.
    """
    get = stored.get
    changed = [key for key, item in fresh.items() if get(key) != item.hash]
    created = [key for key in changed if get(key) is None]
    updated = [key for key in changed if get(key) is not None] if created else changed
    if len(fresh) - len(created) < len(stored):  # fewer fresh keys were stored: some are gone
        return Delta(created, updated, [key for key in stored if key not in fresh])
    return Delta(created, updated)


def changes_for(
    delta: Delta, fresh: Mapping[str, Item], previous: Mapping[str, Any],
    ignore: tuple[str, ...] = (),
) -> list[Change]:  # fmt: skip
    """Events for a delta; `previous` holds the stored values of updated and deleted keys.

    `changes` leaves the `ignore` paths out: the user declared them noise, and
    they did not make the update. `item` and `previous` stay whole.
    """
    out = [Change("item.created", key, value_of(fresh[key].value), None) for key in delta.created]
    for key in delta.updated:
        before, after = previous[key], value_of(fresh[key].value)
        patch = jsonpatch.make_patch(
            without_paths(before, ignore), without_paths(after, ignore)
        ).patch
        out.append(Change("item.updated", key, after, before, patch))
    out.extend(Change("item.deleted", key, None, previous[key]) for key in delta.deleted)
    return out
