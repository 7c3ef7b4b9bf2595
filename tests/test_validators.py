"""When validators are trusted (validators.py, as tables), and the `conditional` key.

The behaviour against real servers is in test_validators_matrix.py; here each
rule is checked on its own, and `conditional:` through the real CLI and a
real upstream.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pollhook.config import Source, load_config
from pollhook.fetch import Fetched
from pollhook.options import Pagination
from pollhook.store import SourceState
from pollhook.validators import CHECK_EVERY, LYING, NONE, PROVEN, judge, kept, to_send

from conftest import pollhook
from servers import Reply, Request, _Server

DATE = "Sun, 06 Dec 2026 10:00:10 GMT"
AT = 1796551210.0  # DATE as Unix time


def fetched(etag: str | None, modified: str | None, date: str | None = DATE) -> Fetched:
    return Fetched(200, b"[]", "application/json", etag, modified, date=date)


@pytest.mark.parametrize(
    ("etag", "modified", "date", "received", "expected"),
    [
        # RFC 9110 §8.8.2.2: modified less than a second before Date is weak: keep nothing
        ('"a"', "Sun, 06 Dec 2026 10:00:10 GMT", DATE, AT, NONE),
        ('"6b1-b"', "Sun, 06 Dec 2026 10:00:10 GMT", DATE, AT + 5, NONE),  # nginx, same second
        ('"a"', "Sun, 06 Dec 2026 10:00:11 GMT", DATE, AT, NONE),  # in the future
        ('"a"', "Sun, 06 Dec 2026 10:00:09 GMT", DATE, AT, ('"a"', "Sun, 06 Dec 2026 10:00:09 GMT")),
        (None, "Sun, 06 Dec 2026 10:00:09 GMT", DATE, AT, (None, "Sun, 06 Dec 2026 10:00:09 GMT")),
        # without a Date header, the time the answer arrived stands in for it
        (None, "Sun, 06 Dec 2026 10:00:09 GMT", None, AT - 0.5, NONE),
        (None, "Sun, 06 Dec 2026 10:00:09 GMT", None, AT, (None, "Sun, 06 Dec 2026 10:00:09 GMT")),
        # a Last-Modified that is not a date is not sent back; the ETag stays
        ('W/"a"', "yesterday", DATE, AT, ('W/"a"', None)),
        ('"a"', None, DATE, AT, ('"a"', None)),
        (None, None, DATE, AT, NONE),
    ],
)
def test_kept_validators_follow_the_one_second_rule(
    etag: str | None, modified: str | None, date: str | None, received: float, expected: Any
) -> None:
    assert kept(fetched(etag, modified, date), received) == expected


E1, E2, WEAK_E1 = ('"1"', None), ('"2"', None), ('W/"1"', None)
L1, L2 = (None, "Sun, 06 Dec 2026 10:00:01 GMT"), (None, "Sun, 06 Dec 2026 10:00:02 GMT")


@pytest.mark.parametrize(
    ("trust", "stored", "new", "body_changed", "items_changed", "expected"),
    [
        (None, E1, E2, True, True, PROVEN),  # new content under a new ETag
        (None, L1, L2, True, False, PROVEN),  # new bytes (same items) under a new date
        (None, E1, E2, False, False, None),  # the same bytes under another node's ETag
        (None, E1, E1, True, True, LYING),  # other items, same ETag
        (None, E1, WEAK_E1, True, True, LYING),  # compared weakly, as If-None-Match is
        (PROVEN, L1, L1, True, True, LYING),  # proven once, caught later
        (None, E1, E1, True, False, None),  # other bytes, same items: no harm done
        (None, NONE, E1, True, True, None),  # nothing stored to compare (weak, or none)
        (None, E1, NONE, True, True, None),  # the server stopped sending validators
        (PROVEN, E1, E2, True, True, PROVEN),
        (LYING, E1, E2, True, True, LYING),  # until re-baselined
    ],
)
def test_judge_trusts_validators_only_on_evidence(
    trust: str | None, stored: Any, new: Any, body_changed: bool, items_changed: bool,
    expected: str | None,
) -> None:  # fmt: skip
    assert judge(trust, stored, new, body_changed, items_changed) == expected


def state(**fields: Any) -> SourceState:
    base: dict[str, Any] = dict(
        name="s", fingerprint="f", etag='"1"', last_modified=None, consecutive_failures=0,
        items_count=1, held_deletes=None, health="ok", trust=None, full_at=1000.0,
    )  # fmt: skip
    return SourceState(**{**base, **fields})


SRC = Source("s", "http://127.0.0.1:9/", 10.0)
NEVER = Source("s", "http://127.0.0.1:9/", 10.0, conditional="never")
PAGED = Source("s", "http://127.0.0.1:9/", 10.0, pagination=Pagination("link"))
SOON = 1000.0 + 10.0
LATE = 1000.0 + CHECK_EVERY * 10.0


@pytest.mark.parametrize(
    ("source", "st", "full_last", "now", "expected"),
    [
        (SRC, None, True, SOON, NONE),  # a baseline
        (SRC, state(), True, SOON, ('"1"', None)),  # unproven, right after a whole body
        (SRC, state(), False, SOON, NONE),  # ... never twice in a row, nor first in a process
        (SRC, state(held_deletes='["1"]'), True, SOON, NONE),  # a hold needs the body
        (SRC, state(etag=None), True, SOON, NONE),  # nothing to send
        (SRC, state(trust=PROVEN), False, SOON, ('"1"', None)),
        (SRC, state(trust=PROVEN, held_deletes='["1"]'), False, SOON, ('"1"', None)),
        (SRC, state(trust=PROVEN), False, LATE, NONE),  # the periodic unconditional check
        (SRC, state(trust=LYING), True, SOON, NONE),
        (NEVER, state(trust=PROVEN), True, SOON, NONE),
        (PAGED, state(trust=PROVEN), True, SOON, NONE),
    ],
)
def test_to_send_decides_each_request(
    source: Source, st: SourceState | None, full_last: bool, now: float, expected: Any
) -> None:
    assert to_send(source, st, full_last, now) == expected


# -- the `conditional` key -------------------------------------------------------------


def write(tmp_path: Path, extra: str, url: str = "http://127.0.0.1:9/x") -> Path:
    path = tmp_path / "sources.yaml"
    text = f"sources:\n  - name: s\n    url: {url}\n    interval: 200ms\n{extra}"
    path.write_text(textwrap.dedent(text))
    return path


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pollhook", "check", "-c", str(path)],
        capture_output=True, text=True, env=dict(os.environ), timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(("value", "expected"), [("auto", "auto"), ("never", "never"),
                                                 ("Never", "never"), (None, "auto")])  # fmt: skip
def test_conditional_values(tmp_path: Path, value: str | None, expected: str) -> None:
    extra = f"    conditional: {value}\n" if value else ""
    assert load_config(write(tmp_path, extra)).sources[0].conditional == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nevr", "'conditional': 'nevr' is not auto or never (did you mean 'never'?)"),
        ("off", "'conditional' is auto or never, not true/false/on/off (did you mean 'never'?)"),
        ("yes", "'conditional' is auto or never, not true/false/on/off (did you mean 'auto'?)"),
        ("disabled", "'conditional': 'disabled' is not auto or never (did you mean 'never'?)"),
        ("always", "'conditional': 'always' is not auto or never (did you mean 'auto'?)"),
        ("sometimes", "'conditional': 'sometimes' is not auto or never\n"),
        ("[never]", "'conditional' must be a string"),
    ],
)
def test_bad_conditional_values_are_one_line_errors(tmp_path: Path, value: str, message: str) -> None:
    path = write(tmp_path, f"    conditional: {value}\n")
    done = check(path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert f"{path}, line 5: source 's': " in done.stderr
    assert message in done.stderr + ("\n" if message.endswith("\n") else ""), done.stderr


def test_a_misspelt_conditional_key_gets_a_suggestion(tmp_path: Path) -> None:
    done = check(write(tmp_path, "    conditonal: never\n"))
    assert done.returncode == 2
    assert "unknown key 'conditonal' (did you mean 'conditional'?)" in done.stderr


class Validating(_Server):
    """An honest upstream: a strong ETag and a Last-Modified per version, 304 when they match."""

    version = 1

    def respond(self, req: Request, handler: Any) -> Reply:
        etag, modified = f'"v{self.version}"', f"Sun, 06 Dec 2026 09:00:0{self.version} GMT"
        if req.headers.get("if-none-match") == etag:
            return 304, {"etag": etag}, b""
        body = f'[{{"id": 1, "v": {self.version}}}]'.encode()
        return 200, {"content-type": "application/json", "etag": etag,
                     "last-modified": modified}, body  # fmt: skip


@pytest.mark.parametrize("mode", ["never", "auto"])
def test_conditional_never_sends_no_validators_even_trusted_ones(tmp_path: Path, mode: str) -> None:
    server = Validating()
    db = str(tmp_path / "s.db")
    try:
        cfg = write(tmp_path, f"    conditional: {mode}\n", f"{server.url}/x")
        for version in (1, 2, 2):  # a baseline; a change under a new ETag (trusted); unchanged
            server.version = version
            done = pollhook("run", "--once", "-c", str(cfg), "--db", db)
            assert done.returncode == 0, done.stderr
        sent = [
            (r.headers.get("if-none-match"), r.headers.get("if-modified-since"), r.status)
            for r in server.requests
        ]
    finally:
        server.close()
    last = ('"v2"', "Sun, 06 Dec 2026 09:00:02 GMT", 304) if mode == "auto" else (None, None, 200)
    assert sent == [(None, None, 200), (None, None, 200), last]
    status = pollhook("status", "--json", "-c", str(cfg), "--db", db)
    assert f'"validators": "{"not used" if mode == "never" else "proven"}"' in status.stdout
