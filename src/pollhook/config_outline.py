"""What the inspection commands need of a config: `state:` and names, never its secrets.

`status`, `events`, `deliveries`, `items`, `replay` and `resume` run from an
operator's shell, where the service's `${VAR}` secrets and tokens and its
`${file:...}` credentials are (rightly) not available. They only need to find
the state file and to know the names of sources and subscribers, so only
`state:` is interpolated here (a variable it uses must be set) and nothing
else is validated: `pollhook check` and `pollhook run` do that.

Without `-c`, they look for `./sources.yaml`, then the systemd unit's
`/etc/pollhook/sources.yaml`; without `--db`, `state:` or `$STATE_DIRECTORY`,
for `./pollhook.db`, then the unit's `/var/lib/pollhook/pollhook.db`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ._yaml import LineMap, load_yaml
from .config import _Validator, parse_duration

LOCAL_CONFIG = Path("sources.yaml")
UNIT_CONFIG = Path("/etc/pollhook/sources.yaml")  # contrib/systemd/pollhook.service
LOCAL_STATE = Path("pollhook.db")
UNIT_STATE = Path("/var/lib/pollhook/pollhook.db")  # its StateDirectory=pollhook


class Named(NamedTuple):
    """A source or subscriber as the inspection commands see it."""

    name: str
    interval: float | None = None  # sources only; None when it does not parse here
    conditional: str = "auto"  # sources only: `never` shows as validators "not used"


@dataclass(frozen=True)
class Outline:
    """The names and the state file of a config, read without resolving its secrets."""

    path: Path
    state: Path | None
    sources: tuple[Named, ...]
    subscribers: tuple[Named, ...]


def load_outline(path: str | Path, env: Mapping[str, str] | None = None) -> Outline:
    """Read `path` for the inspection commands; only YAML syntax and `state:` can fail."""
    path = Path(path)
    data = load_yaml(path)
    validator = _Validator(path, os.environ if env is None else env)
    if not isinstance(data, LineMap):
        raise validator.fail(None, "", "the config must be a mapping with a 'sources' list")
    return Outline(
        path=path,
        state=validator.state(data),
        sources=_named(data.get("sources"), with_interval=True),
        subscribers=_named(data.get("subscribers")),
    )


def default_config() -> Path | None:
    """`./sources.yaml`, else the systemd unit's config, else none."""
    return next((p for p in (LOCAL_CONFIG, UNIT_CONFIG) if p.is_file()), None)


def found_state() -> Path | None:
    """`./pollhook.db`, else the systemd unit's state file, if one exists."""
    return next((p for p in (LOCAL_STATE, UNIT_STATE) if p.exists()), None)


def _named(entries: Any, with_interval: bool = False) -> tuple[Named, ...]:
    if not isinstance(entries, list):
        return ()
    out = []
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            interval = _interval(entry.get("interval")) if with_interval else None
            never = str(entry.get("conditional", "")).strip().lower() == "never"
            out.append(Named(entry["name"], interval, "never" if never else "auto"))
    return tuple(out)


def _interval(value: Any) -> float | None:
    try:
        return parse_duration(value)
    except (ValueError, TypeError):
        return None
