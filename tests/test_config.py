"""Config validation: valid files become typed objects; every bad file is one clear line.

Bad inputs go through the real CLI (`python -m pollhook check -c FILE`) so the
assertions cover what an operator sees: exit code 2, exactly one stderr line,
no traceback, the file, the line where known, and the offending key or value.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pollhook import _yaml
from pollhook.cli import main
from pollhook.config import DEFAULT_RETRY, Config, Source, Subscriber, load_config
from pollhook.errors import ConfigError

SECRET = "whsec_" + base64.b64encode(b"k" * 24).decode()
SECRET_2 = "whsec_" + base64.b64encode(b"j" * 32).decode()
SHORT_SECRET = "whsec_" + base64.b64encode(b"short").decode()
NOBODY = "http://127.0.0.1:9"  # the discard port: nothing listens there in tests
UNSET = "POLLHOOK_TEST_SURELY_UNSET"

CONTRACT_EXAMPLE = f"""\
state: ./pollhook.db          # optional; see the default above

sources:
  - name: tickets             # unique; letters, digits, '-', '_'
    url: {NOBODY}/tickets
    method: GET               # optional, default GET
    headers:                  # optional
      Authorization: "Bearer ${{TICKETS_TOKEN}}"
    interval: 30s             # number of seconds, or 500ms / 30s / 5m / 1h / 1d
    items: "@"                # JMESPath to the list of items; "@" is the body itself
    key: id                   # JMESPath, evaluated on each item, giving its identity
    ignore: [updated_at]      # optional: JMESPath field paths left out of change detection

subscribers:
  - name: helpdesk
    url: {NOBODY}/hooks
    secret: ${{HELPDESK_SECRET}}   # optional; Standard Webhooks secret, "whsec_" + base64
    sources: [tickets]           # optional; default: every source
    events: [item.created, item.updated, item.deleted]   # optional; default: all
    retry: [5s, 5m, 30m, 2h, 5h, 10h, 10h]               # optional; delays between attempts
"""
CONTRACT_ENV = {"TICKETS_TOKEN": "t0k3n", "HELPDESK_SECRET": SECRET}

# A valid source (lines 1-4) and subscriber (lines 5-7) that bad cases extend.
SRC = f"""\
sources:
  - name: tickets
    url: {NOBODY}/tickets
    interval: 30s
"""
SUB = f"""\
subscribers:
  - name: helpdesk
    url: {NOBODY}/hooks
"""


def write(tmp_path: Path, text: str | bytes, name: str = "sources.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), env=env or {})


def source(tmp_path: Path, extra: str = "", env: dict[str, str] | None = None) -> Source:
    return load(tmp_path, SRC + extra, env).sources[0]


def subscriber(tmp_path: Path, extra: str = "", env: dict[str, str] | None = None) -> Subscriber:
    return load(tmp_path, SRC + SUB + extra, env).subscribers[0]


def check(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI, in a clean environment where only `env` adds variables."""
    base = {k: v for k, v in os.environ.items() if k not in CONTRACT_ENV and k != UNSET}
    return subprocess.run(
        [sys.executable, "-m", "pollhook", "check", "-c", str(path)],
        capture_output=True, text=True, env={**base, **(env or {})}, cwd=path.parent, timeout=60,
    )  # fmt: skip


def assert_config_error(
    result: subprocess.CompletedProcess[str], path: Path, line: int | None, fragments: list[str]
) -> str:
    err = result.stderr
    assert result.returncode == 2, err
    assert "Traceback" not in err, err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    assert str(path) in err, err
    if line is not None:
        assert f"line {line}:" in err, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} missing from {err!r}"
    assert result.stdout == ""
    return err


# -- valid configs ------------------------------------------------------------------


def test_contract_example_loads_into_typed_objects(tmp_path: Path) -> None:
    config = load(tmp_path, CONTRACT_EXAMPLE, CONTRACT_ENV)
    assert config.state == Path("./pollhook.db")
    assert config.sources == (
        Source(
            name="tickets", url=f"{NOBODY}/tickets", interval=30.0, items="@", key="id",
            method="GET", headers={"Authorization": "Bearer t0k3n"}, ignore=("updated_at",),
        ),
    )  # fmt: skip
    assert config.subscribers == (
        Subscriber(
            name="helpdesk", url=f"{NOBODY}/hooks", secrets=(SECRET,),
            sources=frozenset({"tickets"}),
            events=frozenset({"item.created", "item.updated", "item.deleted"}),
            retry=(5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0),
        ),
    )  # fmt: skip


def test_defaults_and_optional_subscribers(tmp_path: Path) -> None:
    config = load(tmp_path, SRC)
    assert config.subscribers == ()
    assert config.state is None
    src = config.sources[0]
    assert (src.method, src.items, src.key, src.ignore, src.headers) == ("GET", "@", "id", (), {})
    assert src.timeout is None and src.emit_initial is False
    sub = load(tmp_path, SRC + SUB).subscribers[0]
    assert (sub.secrets, sub.sources, sub.events, sub.retry) == ((), None, None, DEFAULT_RETRY)
    assert sub.wants("tickets", "item.created") and not sub.wants("tickets", "source.failing")


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("1d", 86400.0),
        ("45", 45.0), ("2.5", 2.5), ("1.5h", 5400.0), ('"${IV:-5m}"', 300.0),
    ],
)  # fmt: skip
def test_durations(tmp_path: Path, written: str, seconds: float) -> None:
    text = SRC.replace("interval: 30s", f"interval: {written}")
    assert load(tmp_path, text).sources[0].interval == seconds


@pytest.mark.parametrize(
    ("written", "env", "value"),
    [
        ("Bearer ${TOK}", {"TOK": "abc"}, "Bearer abc"),
        ("${TOK:-fallback}", {}, "fallback"),
        ("${TOK:-fallback}", {"TOK": "set"}, "set"),
        ("x${TOK:-}y", {}, "xy"),
        ("$${TOK}", {"TOK": "abc"}, "${TOK}"),
        ("costs $$5", {}, "costs $5"),
        ("a$b $ c", {}, "a$b $ c"),
        ("${A}${B}", {"A": "1", "B": "2"}, "12"),
    ],
)
def test_interpolation(tmp_path: Path, written: str, env: dict[str, str], value: str) -> None:
    src = source(tmp_path, f'    headers:\n      X-Test: "{written}"\n', env)
    assert src.headers == {"X-Test": value}


@pytest.mark.parametrize(
    ("written", "env", "secrets"),
    [
        (SECRET, {}, (SECRET,)),
        ("${S}", {"S": SECRET}, (SECRET,)),
        (f"[{SECRET_2}, {SECRET}]", {}, (SECRET_2, SECRET)),
        ('""', {}, ()),
        ("${S:-}", {}, ()),
    ],
)
def test_secrets(tmp_path: Path, written: str, env: dict[str, str], secrets: tuple[str]) -> None:
    assert subscriber(tmp_path, f"    secret: {written}\n", env).secrets == secrets


@pytest.mark.parametrize(
    ("extra", "field", "value"),
    [
        ("    retry: [1s, 500ms, 2m]\n", "retry", (1.0, 0.5, 120.0)),
        ("    retry: ['${R:-10s}']\n", "retry", (10.0,)),
        ("    events: item.deleted\n", "events", frozenset({"item.deleted"})),
        ("    events: [source.failing]\n", "events", frozenset({"source.failing"})),
        ("    max_in_flight: 3\n", "max_in_flight", 3),
        ("    max_in_flight: ${M:-4}\n", "max_in_flight", 4),
        ("    timeout: 2s\n", "timeout", 2.0),
    ],
)
def test_subscriber_fields(tmp_path: Path, extra: str, field: str, value: Any) -> None:
    assert getattr(subscriber(tmp_path, extra), field) == value


@pytest.mark.parametrize(
    ("extra", "field", "value"),
    [
        ("    method: post\n", "method", "POST"),
        ("    items: data.tickets\n", "items", "data.tickets"),
        (
            "    key: \"join('-', [org, to_string(id)])\"\n",
            "key",
            "join('-', [org, to_string(id)])",
        ),
        ("    ignore: meta.etag\n", "ignore", ("meta.etag",)),
        ("    timeout: 500ms\n", "timeout", 0.5),
        ("    emit_initial: true\n", "emit_initial", True),
        ("    emit_initial: ${E:-false}\n", "emit_initial", False),
    ],
)
def test_source_fields(tmp_path: Path, extra: str, field: str, value: Any) -> None:
    assert getattr(source(tmp_path, extra), field) == value


def test_http_settings(tmp_path: Path) -> None:
    http = load(tmp_path, SRC + "http:\n  max_per_host: 4\n  timeout: 5s\n  max_body_size: 64KiB\n")
    assert (http.http.max_per_host, http.http.timeout, http.http.max_body_size) == (4, 5.0, 65536)


def test_yaml_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    text = SRC.replace("  - name", "  - &base\n    name") + "  - <<: *base\n    name: other\n"
    assert [s.name for s in load(tmp_path, text).sources] == ["tickets", "other"]


# -- the libyaml fast path reads exactly what the pure loader reads -----------------------

AGREE = [
    CONTRACT_EXAMPLE,
    SRC.replace("  - name", "  - &base\n    name") + "  - <<: *base\n    name: other\n",
    "a: 1\r\nb:\r\n  - x\r\n  - {y: 2, z: [3, 4]}\r\n",
    "a: |\n  one\n  two\nb: >-\n  p\n\n  q\nc: 'x\n\n  y'\n? d\n: [e, {f: g}]\n",
    "url: http://h/p?q=1&r=2\nlist:\n- a\n-\n- c # comment\n\n\nlast: ~\n",
]
DISAGREE = [
    # (text, what PyYAML makes of it); libyaml would accept or read each differently
    ("sources:\n  - name: a\tb\n", "cannot start any token"),
    ("sources: [http://h/p?q=1]\n", "flow sequence"),
    ("sources: {a: }\nx: !\n", None),
    ("sources: |#c\n  x\n", "chomping"),
    ("sources: [\n  ?#c\n  ]\n", None),  # an empty key: libyaml puts it on line 3, PyYAML 2
]


def _load_both(tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """load_yaml's answer with libyaml, then without it (as on a PyYAML built without)."""
    path = write(tmp_path, text)
    answers = []
    for fast in (_yaml._FastLoader, None):
        monkeypatch.setattr(_yaml, "_FastLoader", fast)
        try:
            answers.append(_lines(_yaml.load_yaml(path)))
        except ConfigError as exc:
            answers.append(str(exc))
    return answers[0], answers[1]


def _lines(value: Any) -> Any:
    """A loaded value with the line numbers it carries, for comparison."""
    if isinstance(value, _yaml.LineMap):
        return ("map", value.line, [(k, value.key_lines[k], _lines(v)) for k, v in value.items()])
    if isinstance(value, _yaml.LineList):
        return ("list", value.line, value.item_lines, [_lines(v) for v in value])
    return (type(value).__name__, value)


@pytest.mark.skipif(_yaml._FastLoader is None, reason="PyYAML built without libyaml")
@pytest.mark.parametrize("text", AGREE)
def test_libyaml_and_pure_loader_agree_on_values_and_lines(
    tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, pure = _load_both(tmp_path, text, monkeypatch)
    assert fast == pure
    assert not isinstance(fast, str)


@pytest.mark.skipif(_yaml._FastLoader is None, reason="PyYAML built without libyaml")
@pytest.mark.parametrize(("text", "fragment"), DISAGREE)
def test_where_libyaml_reads_differently_the_pure_loader_decides(
    tmp_path: Path, text: str, fragment: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, pure = _load_both(tmp_path, text, monkeypatch)
    assert fast == pure
    if fragment is not None:
        assert isinstance(fast, str) and fragment in fast, fast


@pytest.mark.parametrize(
    "text", ["[" * 60 + "]" * 60 + "\n", "a:\n" + "".join(f"{' ' * i} b:\n" for i in range(1, 60))]
)
def test_deep_nesting_is_left_to_the_pure_loader(
    tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, pure = _load_both(tmp_path, text, monkeypatch)
    assert fast == pure


FINGERPRINT_BASE = {
    "url": f"{NOBODY}/",
    "interval": "30s",
    "items": "'@'",
    "key": "id",
    "ignore": "[a]",
}


@pytest.mark.parametrize(
    ("field", "value", "changes"),
    [
        ("key", "id", False),
        ("interval", "5m", False),
        ("url", f"{NOBODY}/elsewhere", False),
        ("headers", "{X-A: b}", False),
        ("emit_initial", "true", False),
        ("ignore", "[a, b]", True),
        ("ignore", "[]", True),
        ("items", "data", True),
        ("key", "uuid", True),
    ],
)
def test_fingerprint_tracks_only_detection_settings(
    tmp_path: Path, field: str, value: str, changes: bool
) -> None:
    def fingerprint(fields: dict[str, str]) -> str:
        body = "".join(f"    {k}: {v}\n" for k, v in fields.items())
        return load(tmp_path, "sources:\n  - name: s\n" + body).sources[0].fingerprint

    before = fingerprint(FINGERPRINT_BASE)
    assert (before != fingerprint({**FINGERPRINT_BASE, field: value})) is changes


def test_fingerprint_ignores_ignore_order(tmp_path: Path) -> None:
    one = source(tmp_path, "    ignore: [a, b.c]\n").fingerprint
    assert one == source(tmp_path, "    ignore: [b.c, a]\n").fingerprint


def test_check_accepts_valid_file_and_contacts_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, CONTRACT_EXAMPLE.replace("./pollhook.db", "./never-created.db"))
    result = check(path, CONTRACT_ENV)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("ok") and result.stdout.count("\n") == 1
    assert not (tmp_path / "never-created.db").exists()


def test_check_opens_no_connection(tmp_path: Path) -> None:
    """A listener whose backlog stays empty proves `check` never connected (no sleeping)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        path = write(tmp_path, CONTRACT_EXAMPLE.replace(NOBODY, url))
        assert check(path, CONTRACT_ENV).returncode == 0
        with pytest.raises(BlockingIOError):
            listener.accept()


def test_check_accepts_the_repository_sources_yaml() -> None:
    path = Path(__file__).resolve().parent.parent / "sources.yaml"
    result = check(path)
    assert (result.returncode, result.stdout[:2]) == (0, "ok"), result.stderr


# -- bad configs through the real CLI -------------------------------------------------

BAD: list[Any] = [
    # (text, env, line, fragments)
    pytest.param("", {}, None, ["empty"], id="empty-file"),
    pytest.param("# only a comment\n", {}, None, ["empty"], id="only-comments"),
    pytest.param(
        "sources:\n  - name: a\n    url 'http://x'\n    interval: 5\n",
        {},
        3,
        ["YAML syntax error", "expected ':'"],
        id="yaml-missing-colon",
    ),
    pytest.param(
        "sources:\n  - name: a\n\turl: http://x\n",
        {},
        3,
        ["YAML syntax error", "\\t"],
        id="yaml-tab",
    ),
    pytest.param(
        SRC + "  bad: 1\n",
        {},
        5,
        ["YAML syntax error"],
        id="yaml-bad-indent",
    ),
    pytest.param("a: 1\n---\nb: 2\n", {}, 2, ["single document"], id="yaml-two-documents"),
    pytest.param("sources: [\n", {}, 1, ["YAML syntax error"], id="yaml-unclosed-flow"),
    # mistakes PyYAML notices only on a later line: the error names the line of the mistake
    pytest.param(
        'sources:\n  - name: "a\n    url: http://x\n    interval: 5\n', {}, 2,
        ["YAML syntax error", "quote", "not closed", "line 5"], id="yaml-unclosed-quote",
    ),
    pytest.param(
        "sources:\n  - name: 'a\n    url: 'http://x'\n    interval: 5\n", {}, 2,
        ["YAML syntax error", "quote"], id="yaml-unclosed-quote-closed-later",
    ),
    pytest.param(
        "sources:\n  - name: a\n    ignore: [a, b\n\n    url: http://x\n", {}, 3,
        ["YAML syntax error", "'[' opened here is not closed", "line 5"],
        id="yaml-unclosed-bracket",
    ),
    pytest.param(
        "http: {timeout: 1s\nsources:\n  - name: a\n", {}, 1,
        ["YAML syntax error", "'{' opened here is not closed"], id="yaml-unclosed-brace",
    ),
    pytest.param(
        "sources:\n  - name: a\n    ignore: [a, b\n\n# the end\n", {}, 3,
        ["YAML syntax error", "not closed", "end of the file"], id="yaml-unclosed-bracket-at-end",
    ),
    pytest.param(
        "sources:\n  - name a\n    url: http://x\n", {}, 2,
        ["YAML syntax error", "missing ':'"], id="yaml-missing-colon-before-indented-line",
    ),
    pytest.param(
        "sources:\n  - name: a\n    url: http://x\n   interval: 5\n", {}, 4,
        ["YAML syntax error"], id="yaml-bad-indent-less",
    ),
    pytest.param(
        "sources:\n  - name: a\n    url: http://x\n      interval: 5\n", {}, 4,
        ["YAML syntax error"], id="yaml-bad-indent-more",
    ),
    pytest.param(
        "sources:\n  - name: a\n    url: x\n    \tinterval: 1\n", {}, 4,
        ["YAML syntax error", "\\t"], id="yaml-tab-inside-indent",
    ),
    pytest.param("x: *nowhere\n", {}, 1, ["nowhere"], id="yaml-unknown-alias"),
    pytest.param("sources: !!python/name:os.system\n", {}, 1, ["tag"], id="yaml-unsafe-tag"),
    pytest.param(
        SRC.replace("30s", "!!int"), {}, 4, ["'' is not a valid !!int"], id="yaml-empty-int-tag"
    ),
    pytest.param(
        SRC.replace("30s", "!!float abc"), {}, 4, ["'abc' is not a valid !!float"],
        id="yaml-bad-float-tag",
    ),
    pytest.param(
        SRC.replace("30s", "!!timestamp"), {}, 4, ["not a valid !!timestamp"],
        id="yaml-empty-timestamp-tag",
    ),
    pytest.param("sources:\n  - a\x00\n", {}, 2, ["#x0000"], id="yaml-nul-character"),
    pytest.param("[" * 3000, {}, None, ["nest"], id="yaml-too-deep"),
    pytest.param(
        SRC + "    key: " + "(" * 3000 + "\n", {}, 5, ["'key'", "nest"], id="jmespath-too-deep"
    ),
    pytest.param("- a\n- b\n", {}, 1, ["mapping", "list"], id="top-level-list"),
    pytest.param("just words\n", {}, 1, ["mapping", "'just words'"], id="top-level-scalar"),
    pytest.param(
        SRC + "subscriber:\n  - name: x\n",
        {},
        5,
        ["unknown key 'subscriber'", "did you mean 'subscribers'"],
        id="unknown-top-key-close",
    ),
    pytest.param(
        SRC + "colour: red\n",
        {},
        5,
        ["unknown key 'colour'", "known keys"],
        id="unknown-top-key-far",
    ),
    pytest.param(
        SRC.replace("interval:", "intervall:"),
        {},
        4,
        ["source 'tickets'", "unknown key 'intervall'", "did you mean 'interval'"],
        id="misspelt-required-key",
    ),
    pytest.param(
        SRC + "    emitinitial: true\n",
        {},
        5,
        ["'emitinitial'", "did you mean 'emit_initial'"],
        id="misspelt-optional-key",
    ),
    pytest.param(
        "sources:\n  - name: a\n    interval: 5\n",
        {},
        2,
        ["source 'a'", "missing required key 'url'"],
        id="missing-url",
    ),
    pytest.param(
        SRC + SUB.replace(f"    url: {NOBODY}/hooks\n", ""),
        {},
        6,
        ["subscriber 'helpdesk'", "missing required key 'url'"],
        id="subscriber-missing-url",
    ),
    pytest.param(
        "subscribers: []\n",
        {},
        1,
        ["missing required key 'sources'"],
        id="missing-sources",
    ),
    pytest.param("sources: []\n", {}, 1, ["'sources'", "at least one"], id="sources-empty"),
    pytest.param("sources:\n", {}, 1, ["'sources'", "at least one"], id="sources-null"),
    pytest.param(
        "sources:\n  name: a\n",
        {},
        1,
        ["'sources' must be a list"],
        id="sources-mapping",
    ),
    pytest.param(
        "sources:\n  - [a, b]\n",
        {},
        2,
        ["sources[0]", "mapping", "list"],
        id="source-is-list",
    ),
    pytest.param("sources:\n  - ~\n", {}, 2, ["sources[0]", "mapping"], id="source-is-null"),
    pytest.param(
        SRC + SRC.replace("sources:\n", ""),
        {},
        5,
        ["duplicate name 'tickets'", "first at line 2"],
        id="duplicate-source-name",
    ),
    pytest.param(
        SRC + SUB + SUB.replace("subscribers:\n", ""),
        {},
        8,
        ["duplicate name 'helpdesk'"],
        id="duplicate-subscriber-name",
    ),
    pytest.param(
        SRC.replace("name: tickets", "name: tick ets"),
        {},
        2,
        ["'tick ets'", "letters"],
        id="name-space",
    ),
    pytest.param(
        SRC.replace("name: tickets", 'name: "tick\\nets"'),
        {},
        2,
        ["letters"],
        id="name-newline",
    ),
    pytest.param(
        SRC.replace("name: tickets", "name: [a]"),
        {},
        2,
        ["'name' must be a string"],
        id="name-list",
    ),
    pytest.param(
        SRC.replace("30s", "30x"),
        {},
        4,
        ["'interval'", "'30x'", "duration"],
        id="duration-unit",
    ),
    pytest.param(SRC.replace("30s", "0"), {}, 4, ["'interval'", "0"], id="duration-zero"),
    pytest.param(SRC.replace("30s", "0ms"), {}, 4, ["'interval'", "0ms"], id="duration-0ms"),
    pytest.param(SRC.replace("30s", "-5s"), {}, 4, ["'interval'", "-5s"], id="duration-negative"),
    pytest.param(SRC.replace("30s", "-5"), {}, 4, ["'interval'", "-5"], id="duration-neg-number"),
    pytest.param(SRC.replace("30s", "true"), {}, 4, ["'interval'", "True"], id="duration-bool"),
    pytest.param(SRC.replace("30s", "400d"), {}, 4, ["'interval'", "400d"], id="duration-huge"),
    pytest.param(SRC + "    timeout: 0s\n", {}, 5, ["'timeout'", "0s"], id="timeout-zero"),
    pytest.param(
        SRC.replace(f"{NOBODY}/tickets", "ftp://127.0.0.1/x"),
        {},
        3,
        ["'url'", "ftp://"],
        id="url-scheme",
    ),
    pytest.param(
        SRC.replace(f"{NOBODY}/tickets", "tickets.example"),
        {},
        3,
        ["'url'", "tickets.example"],
        id="url-no-scheme",
    ),
    pytest.param(
        SRC.replace(f"{NOBODY}/tickets", "http://"),
        {},
        3,
        ["'url'", "'http://'"],
        id="url-no-host",
    ),
    pytest.param(
        SRC.replace(f"{NOBODY}/tickets", '"http://exa mple.com/"'),
        {},
        3,
        ["'url'", "exa mple"],
        id="url-space",
    ),
    pytest.param(
        SRC.replace(f"{NOBODY}/tickets", "http://host:99999/"),
        {},
        3,
        ["'url'", "99999"],
        id="url-bad-port",
    ),
    pytest.param(SRC + "    items: 'foo[?'\n", {}, 5, ["'items'", "foo[?"], id="jmespath-items"),
    pytest.param(SRC + "    key: a b\n", {}, 5, ["'key'", "'a b'"], id="jmespath-key"),
    pytest.param(
        SRC + "    items: lenght(@)\n",
        {},
        5,
        ["'items'", "lenght", "did you mean 'length'"],
        id="jmespath-unknown-function",
    ),
    pytest.param(
        SRC + "    key: length(a, b)\n",
        {},
        5,
        ["'key'", "length()"],
        id="jmespath-arity",
    ),
    pytest.param(SRC + "    ignore: [a..b]\n", {}, 5, ["'ignore'", "a..b"], id="ignore-path"),
    pytest.param(
        SRC + "    ignore:\n      - ok\n      - '[0]'\n",
        {},
        7,
        ["'ignore'", "[0]"],
        id="ignore-path-line",
    ),
    pytest.param(SRC + "    ignore: {a: 1}\n", {}, 5, ["'ignore'", "list"], id="ignore-mapping"),
    pytest.param(
        SRC.replace("127.0.0.1", "${" + UNSET + "}"),
        {},
        3,
        ["url", UNSET, "not set"],
        id="env-missing-url",
    ),
    pytest.param(
        SRC + "    headers:\n      Authorization: Bearer ${" + UNSET + "}\n",
        {},
        6,
        ["Authorization", UNSET],
        id="env-missing-header",
    ),
    pytest.param(
        SRC + SUB + "    secret: ${HELPDESK_SECRET}\n",
        {},
        8,
        ["HELPDESK_SECRET", "not set"],
        id="env-missing-secret",
    ),
    pytest.param(
        SRC.replace("30s", "${IV:5m}"),
        {},
        4,
        ["${IV:5m}", "${VAR:-default}"],
        id="env-bad-syntax",
    ),
    pytest.param(
        SRC.replace("30s", "${IV:-5x}"),
        {},
        4,
        ["'interval'", "5x"],
        id="env-default-bad",
    ),
    pytest.param(
        SRC + SUB + "    secret: c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0\n",
        {},
        8,
        ["'secret'", "whsec_"],
        id="secret-no-prefix",
    ),
    pytest.param(
        SRC + SUB + "    secret: whsec_not*base64!\n",
        {},
        8,
        ["'secret'", "base64"],
        id="secret-bad-base64",
    ),
    pytest.param(
        SRC + SUB + f"    secret: {SHORT_SECRET}\n",
        {},
        8,
        ["'secret'", "24..64 bytes", "5"],
        id="secret-too-short",
    ),
    pytest.param(
        SRC + SUB + f"    secret:\n      - {SECRET}\n      - whsec_x\n",
        {},
        10,
        ["'secret'"],
        id="secret-rotation-entry",
    ),
    pytest.param(
        SRC + SUB + "    secret: {a: b}\n",
        {},
        8,
        ["'secret'", "list"],
        id="secret-mapping",
    ),
    pytest.param(
        SRC + SUB + "    sources: [ticket]\n",
        {},
        8,
        ["unknown source 'ticket'", "did you mean 'tickets'"],
        id="subscriber-unknown-source",
    ),
    pytest.param(
        SRC + SUB + "    events: [item.created, item.update]\n",
        {},
        8,
        ["unknown event type 'item.update'", "did you mean 'item.updated'"],
        id="unknown-event",
    ),
    pytest.param(
        SRC + SUB + "    events:\n      - item.created\n      - order.paid\n",
        {},
        10,
        ["unknown event type 'order.paid'"],
        id="unknown-event-line",
    ),
    pytest.param(
        SRC + SUB + "    retry: 5s\n",
        {},
        8,
        ["'retry'", "list"],
        id="retry-not-list",
    ),
    pytest.param(
        SRC + SUB + "    retry:\n      - 5s\n      - soon\n",
        {},
        10,
        ["'retry'", "'soon'"],
        id="retry-bad-entry",
    ),
    pytest.param(
        SRC + SUB + "    retry: [5s, 0]\n",
        {},
        8,
        ["'retry'", "0"],
        id="retry-zero-entry",
    ),
    pytest.param(
        SRC + SUB + "    retry: [5s, [1]]\n",
        {},
        8,
        ["'retry'"],
        id="retry-nested-list",
    ),
    pytest.param(
        SRC + "    headers: [a, b]\n",
        {},
        5,
        ["'headers' must be a mapping"],
        id="headers-list",
    ),
    pytest.param(
        SRC + '    headers:\n      X-A: "a\\nb"\n',
        {},
        6,
        ["X-A", "line breaks"],
        id="header-newline",
    ),
    pytest.param(
        SRC + "    headers:\n      Bad Name: x\n",
        {},
        6,
        ["header name", "Bad Name"],
        id="header-bad-name",
    ),
    pytest.param(
        SRC + "    headers:\n      X-A: {b: c}\n",
        {},
        6,
        ["X-A", "plain value"],
        id="header-mapping-value",
    ),
    pytest.param(
        SRC + SUB + "    headers: x\n",
        {},
        8,
        ["'headers' must be a mapping"],
        id="subscriber-headers-scalar",
    ),
    pytest.param(
        SRC + f"    url: {NOBODY}/again\n",
        {},
        5,
        ["duplicate key 'url'"],
        id="duplicate-yaml-key",
    ),
    pytest.param(
        SRC + "http: {}\nhttp: {}\n",
        {},
        6,
        ["duplicate key 'http'"],
        id="duplicate-top-key",
    ),
    pytest.param(SRC + "    method: FETCH\n", {}, 5, ["method", "'FETCH'"], id="method-unknown"),
    pytest.param(
        SRC + SUB + "    max_in_flight: 0\n",
        {},
        8,
        ["'max_in_flight'", "0"],
        id="max-in-flight-zero",
    ),
    pytest.param(
        SRC + SUB + "    max_in_flight: 1.5\n",
        {},
        8,
        ["'max_in_flight'", "1.5"],
        id="max-in-flight-fraction",
    ),
    pytest.param(
        SRC + "http:\n  max_body_size: 10XB\n",
        {},
        6,
        ["'max_body_size'", "10XB"],
        id="max-body-size-unit",
    ),
    pytest.param(
        SRC + "http:\n  max_body_size: 0\n",
        {},
        6,
        ["'max_body_size'", "0"],
        id="max-body-size-zero",
    ),
    pytest.param(
        SRC + "http:\n  max_body_size: -1MB\n",
        {},
        6,
        ["'max_body_size'", "-1MB"],
        id="max-body-size-negative",
    ),
    pytest.param(
        SRC + "http:\n  max_per_hosts: 3\n",
        {},
        6,
        ["'max_per_hosts'", "did you mean"],
        id="http-unknown-key",
    ),
    pytest.param(SRC + "http: [1]\n", {}, 5, ["http", "mapping", "list"], id="http-list"),
    pytest.param(
        SRC + "http:\n  max_per_host: 0\n",
        {},
        6,
        ["'max_per_host'"],
        id="max-per-host-zero",
    ),
    pytest.param(
        SRC + SUB + "    max_in_flight: " + "9" * 400 + "\n",
        {},
        8,
        ["'max_in_flight'"],
        id="max-in-flight-huge",
    ),
    pytest.param(
        SRC.replace("30s", "9" * 400), {}, 4, ["'interval'", "366d"], id="duration-huge-number"
    ),
    pytest.param(SRC + "state: ''\n", {}, 5, ["'state'"], id="state-empty"),
    pytest.param(SRC + "state: [a]\n", {}, 5, ["'state'"], id="state-list"),
    pytest.param(
        SRC + "subscribers:\n  name: x\n",
        {},
        5,
        ["'subscribers' must be a list"],
        id="subscribers-mapping",
    ),
    pytest.param(
        SRC + "    emit_initial: maybe\n",
        {},
        5,
        ["'emit_initial'", "true or false"],
        id="emit-initial-not-bool",
    ),
]


@pytest.mark.parametrize(("text", "env", "line", "fragments"), BAD)
def test_bad_config_is_one_clear_line(
    tmp_path: Path, text: str, env: dict[str, str], line: int | None, fragments: list[str]
) -> None:
    path = tmp_path / "sources.yaml"
    path.write_text(text)
    assert_config_error(check(path, env), path, line, fragments)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert_config_error(check(path), path, None, ["not found"])


def test_directory_instead_of_file(tmp_path: Path) -> None:
    path = tmp_path / "dir.yaml"
    path.mkdir()
    assert_config_error(check(path), path, None, ["cannot read"])


def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, SRC)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as a user who can read mode-000 files (root)")
        assert_config_error(check(path), path, None, ["cannot read", "ermission denied"])
    finally:
        path.chmod(0o644)


def test_unreadable_file_message_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same check for root, who can read mode-000 files: the CLI path, in process."""
    path = write(tmp_path, SRC)

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    assert main(["check", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"pollhook: error: {path}: cannot read config file: Permission denied\n"


def test_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, SRC.encode() + b"    key: caf\xe9\n")
    assert_config_error(check(path), path, 5, ["UTF-8"])


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbf" + SRC.encode())
    assert load_config(path, env={}).sources[0].name == "tickets"


# -- secrets from files and systemd credentials --------------------------------------


def test_secret_from_a_systemd_credential_file(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "helpdesk_secret").write_text("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n")
    cfg = tmp_path / "sources.yaml"
    cfg.write_text(
        "sources:\n  - {name: a, url: 'http://127.0.0.1:1/a', interval: 1m}\n"
        "subscribers:\n  - name: h\n    url: http://127.0.0.1:1/h\n"
        "    secret: ${file:helpdesk_secret}\n"
    )
    config = load_config(cfg, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert config.subscribers[0].secrets == ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",)
    # without $CREDENTIALS_DIRECTORY a relative name is relative to the config file
    (tmp_path / "helpdesk_secret").write_text("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert load_config(cfg, env={}).subscribers[0].secrets[0].startswith("whsec_")


def test_missing_secret_file_is_a_one_line_error_without_the_secret(tmp_path: Path) -> None:
    cfg = tmp_path / "sources.yaml"
    cfg.write_text(
        "sources:\n  - {name: a, url: 'http://127.0.0.1:1/a', interval: 1m}\n"
        "subscribers:\n  - name: h\n    url: http://127.0.0.1:1/h\n"
        "    secret: ${file:/nonexistent/helpdesk_secret}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(cfg, env={})
    message = str(info.value)
    assert "line 6" in message and "/nonexistent/helpdesk_secret" in message
    assert "No such file" in message and "\n" not in message
