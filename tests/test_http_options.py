"""Config keys of requests, pagination, incremental mode and safety; the cursor's arithmetic.

Valid snippets load into typed Source fields; each bad one is one ConfigError
line naming the file, the line and the key (as `pollhook check` prints it).
"""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest

from pollhook import cursor
from pollhook.config import HttpSettings, Source, load_config
from pollhook.errors import ConfigError, ExtractError
from pollhook.extract import Item
from pollhook.options import Auth, Incremental, MassDelete, Pagination
from pollhook.request import extra_headers, query

HEAD = """\
sources:
  - name: s
    url: http://127.0.0.1:9/items
    interval: 1m
"""  # lines 1-4; a snippet starts at line 5


def load(tmp_path: Path, snippet: str, top: str = "", env: dict[str, str] | None = None) -> Any:
    path = tmp_path / "sources.yaml"
    path.write_text(top + HEAD + textwrap.indent(textwrap.dedent(snippet), "    "))
    return load_config(path, env=env or {})


def loaded(tmp_path: Path, snippet: str, env: dict[str, str] | None = None) -> Source:
    source: Source = load(tmp_path, snippet, env=env).sources[0]
    return source


# -- valid -----------------------------------------------------------------------------


def test_defaults_change_nothing(tmp_path: Path) -> None:
    src = loaded(tmp_path, "")
    assert (src.params, src.body, src.auth, src.pagination, src.incremental) == ((),) + (None,) * 4
    assert (src.verify_tls, src.ca_bundle, src.max_body_size) == (True, None, None)
    assert (src.mass_delete, src.max_events_per_poll, src.failing_after, src.jitter) == (
        MassDelete(10, 0.10), None, 3, 0.0,
    )  # fmt: skip
    assert load(tmp_path, "").http == HttpSettings()
    # an existing source keeps its fingerprint, so upgrading re-baselines nothing
    assert src.fingerprint == Source("s", "http://x/", 60).fingerprint


@pytest.mark.parametrize(
    ("snippet", "field", "value"),
    [
        ("params: {a: 1, b: [x, y], c: true}", "params",
         (("a", "1"), ("b", "x"), ("b", "y"), ("c", "true"))),
        ("params: {q: '${Q:-d}'}", "params", (("q", "d"),)),
        ("body: '<x/>'\ncontent_type: text/xml", "body", b"<x/>"),
        ("body: hi", "content_type", "text/plain; charset=utf-8"),
        ("body_json: {a: [1, null, '${Q:-z}']}", "body", b'{"a":[1,null,"z"]}'),
        ("body_json: {a: 1}", "content_type", "application/json"),
        ("body_form: {a: 'b c', d: [1, 2]}", "body", b"a=b+c&d=1&d=2"),
        ("auth: {bearer: t}", "auth", Auth("bearer", secret="t")),
        ("auth: {basic: {username: u, password: p}}", "auth", Auth("basic", "u", "p")),
        ("verify_tls: false", "verify_tls", False),
        ("max_body_size: 2MB", "max_body_size", 2_000_000),
        ("pagination: link", "pagination", Pagination("link")),
        ("pagination: {type: page}", "pagination", Pagination("page", param="page", start=1)),
        ("pagination: {type: offset, param: skip, size: 50, size_param: top, max_pages: 9}",
         "pagination", Pagination("offset", param="skip", size=50, size_param="top", max_pages=9)),
        ("pagination: {type: cursor, next: meta.next, param: after, confirm_deletions: false}",
         "pagination", Pagination("cursor", next="meta.next", param="after",
                                  confirm_deletions=False)),
        ("pagination: {type: next_url, next: links.next}", "pagination",
         Pagination("next_url", next="links.next")),
        ("incremental: {cursor: updated_at, param: since}", "incremental",
         Incremental("updated_at", "since")),
        ("incremental: {cursor: 'max(@[].id)', param: after, overlap: 10, initial: 0}",
         "incremental", Incremental("max(@[].id)", "after", 10.0, 0)),
        ("incremental: {cursor: t, param: s, overlap: 5m, initial: '2026-01-01'}",
         "incremental", Incremental("t", "s", 300.0, "2026-01-01")),
        ("mass_delete: {min: 0, ratio: 0.5}", "mass_delete", MassDelete(0, 0.5)),
        ("mass_delete: {ratio: 25%}", "mass_delete", MassDelete(10, 0.25)),
        ("max_events_per_poll: 100", "max_events_per_poll", 100),
        ("failing_after: 5", "failing_after", 5),
        ("jitter: 10%", "jitter", 6.0),
        ("jitter: 15s", "jitter", 15.0),
    ],
)  # fmt: skip
def test_valid(tmp_path: Path, snippet: str, field: str, value: Any) -> None:
    assert getattr(loaded(tmp_path, snippet), field) == value


def test_auth_values_come_from_the_environment_and_files(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-file\n")
    src = loaded(
        tmp_path, "auth: {basic: {username: '${U}', password: '${file:pw}'}}", env={"U": "ops"}
    )
    assert src.auth == Auth("basic", "ops", "from-file")
    assert "from-file" not in repr(src)  # secrets stay out of logs and tracebacks
    assert extra_headers(src) == {
        "authorization": "Basic " + base64.b64encode(b"ops:from-file").decode()
    }


def test_min_delay(tmp_path: Path) -> None:
    assert load(tmp_path, "", top="http:\n  min_delay: 250ms\n").http.min_delay == 0.25
    assert load(tmp_path, "", top="http:\n  min_delay: 0\n").http.min_delay == 0.0


def test_params_merge_and_override_the_urls_query() -> None:
    src = Source("s", "http://h/x", 1, params=(("a", "1"), ("a", "2"), ("b", "x")))
    assert str(query(src, [("b", "y")], [])) == "a=1&a=2&b=y"


def test_detection_settings_re_baseline_but_limits_do_not(tmp_path: Path) -> None:
    base = loaded(tmp_path, "pagination: {type: page, size: 10}").fingerprint
    assert loaded(tmp_path, "pagination: {type: page, size: 10, max_pages: 5}").fingerprint == base
    assert loaded(tmp_path, "pagination: {type: page, size: 20}").fingerprint != base
    inc = loaded(tmp_path, "incremental: {cursor: t, param: s}").fingerprint
    assert loaded(tmp_path, "incremental: {cursor: t, param: s, overlap: 1m}").fingerprint == inc
    assert loaded(tmp_path, "incremental: {cursor: u, param: s}").fingerprint != inc
    assert inc != loaded(tmp_path, "").fingerprint


# -- invalid: one line, the right line, the key -------------------------------------------


@pytest.mark.parametrize(
    ("snippet", "line", "fragments"),
    [
        ("paramz: {a: 1}", 5, ["unknown key 'paramz'", "did you mean 'params'"]),
        ("params: [a]", 5, ["'params' must be a mapping"]),
        ("params: {a: {b: 1}}", 5, ["'params.a' must be a plain value"]),
        ("body: x\nbody_json: {}", 6, ["'body' and 'body_json': set only one body"]),
        ("body_json: {}\ncontent_type: x", 6, ["'content_type' goes with a raw 'body'"]),
        ("auth: {bearer: t, basic: {username: u, password: p}}", 5, ["exactly one"]),
        ("auth: {baerer: t}", 5, ["unknown key 'baerer'", "did you mean 'bearer'"]),
        ("auth: {basic: {username: u}}", 5, ["auth.basic", "missing required key 'password'"]),
        ("auth: {basic: {username: 'a:b', password: p}}", 5, ["must not contain ':'"]),
        ("auth: {bearer: ''}", 5, ["'bearer' token is empty"]),
        ("auth: {bearer: '${NOPE}'}", 5, ["'NOPE' is not set"]),
        ("headers: {Authorization: x}\nauth: {bearer: t}", 6, ["both set"]),
        ("ca_bundle: missing.pem", 5, ["cannot read CA bundle", "missing.pem"]),
        ("ca_bundle: sources.yaml", 5, ["holds no PEM certificate"]),
        ("verify_tls: maybe", 5, ["'verify_tls'", "true or false"]),
        ("max_body_size: lots", 5, ["'max_body_size'", "is not a size"]),
        ("pagination: {typ: link}", 5, ["unknown key 'typ'", "did you mean 'type'"]),
        ("pagination: {type: lnk}", 5, ["'lnk' is unknown", "did you mean 'link'"]),
        ("pagination: {max_pages: 3}", 5, ["'type' missing"]),
        ("pagination: {type: cursor, next: a}", 5, ["missing required key 'param'"]),
        ("pagination: {type: link, param: p}", 5, ["pagination (link)", "unknown key 'param'"]),
        ("pagination: {type: page, size_param: n}", 5, ["'size_param' needs 'size'"]),
        ("pagination: {type: page, start: -1}", 5, ["'start'", "at least 0"]),
        ("pagination: {type: page, max_pages: 0}", 5, ["'max_pages'", "at least 1"]),
        ("pagination: {type: cursor, next: 'a[', param: c}", 5, ["'next': bad JMESPath"]),
        ("pagination: [link]", 5, ["must be a mapping with a 'type'"]),
        ("format: html\npagination: link", 6, ["needs a list of items, not mode: document"]),
        ("incremental: {cursor: t}", 5, ["missing required key 'param'"]),
        ("incremental: {cursor: t, param: s, overlap: soon}", 5, ["'overlap'"]),
        ("incremental: {cursor: 'max(', param: s}", 5, ["'cursor': bad JMESPath"]),
        ("incremental: {cursor: t, param: s}\nmass_delete: {min: 1}", 6,
         ["'mass_delete' has no effect with 'incremental'"]),
        ("mass_delete: {ratio: 150%}", 5, ["'ratio'", "percentage"]),
        ("mass_delete: {mn: 3}", 5, ["did you mean 'min'"]),
        ("max_events_per_poll: 0", 5, ["'max_events_per_poll'"]),
        ("failing_after: two", 5, ["'failing_after'"]),
        ("jitter: 2m", 5, ["'jitter'", "up to the interval"]),
    ],
)  # fmt: skip
def test_invalid(tmp_path: Path, snippet: str, line: int, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, snippet)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "sources.yaml") in message
    assert f"line {line}:" in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_invalid_min_delay(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"line 2: http: 'min_delay'"):
        load(tmp_path, "", top="http:\n  min_delay: -1s\n")


# -- the incremental cursor ------------------------------------------------------------------


def inc(expression: str = "updated_at", overlap: float = 0.0, initial: Any = None) -> Source:
    return Source("s", "http://x/", 1, incremental=Incremental(expression, "since", overlap, initial))


def items(*values: Any) -> dict[str, Item]:
    return {str(i): Item(str(i), "h", value) for i, value in enumerate(values)}


@pytest.mark.parametrize(
    ("stored", "overlap", "sent"),
    [
        ('"2026-11-27T10:05:00Z"', 60, "2026-11-27T10:04:00Z"),
        ('"2026-11-27T10:05:00.250Z"', 1, "2026-11-27T10:04:59.250Z"),
        ('"2026-11-27T10:05:00.123456+02:00"', 90, "2026-11-27T10:03:30.123456+02:00"),
        ('"2026-11-27 10:05:00"', 300, "2026-11-27 10:00:00"),
        ('"2026-11-27"', 86400, "2026-11-26"),
        ("1700000000", 60, "1699999940"),
        ("1700000000.5", 0.25, "1700000000.25"),
        ('"00120"', 5, "00115"),
        ('"opaque-token"', 0, "opaque-token"),
        ("42", 0, "42"),
    ],
)
def test_since_moves_the_cursor_back_by_the_overlap(stored: str, overlap: float, sent: str) -> None:
    assert cursor.since(inc(overlap=overlap), stored) == sent


def test_since_without_a_cursor_sends_the_initial_value_or_nothing() -> None:
    assert cursor.since(inc(), None) is None
    assert cursor.since(inc(initial="2026-01-01T00:00:00Z", overlap=60), None) == (
        "2026-01-01T00:00:00Z"
    )
    assert cursor.since(Source("s", "http://x/", 1), '"x"') is None


def test_advance_compares_instants_not_text() -> None:
    found = items(
        {"updated_at": "2026-11-27T10:00:00Z"},
        {"updated_at": "2026-11-27T10:00:00.500Z"},  # later, though '.' sorts before 'Z'
        {"updated_at": None},
        {"other": 1},
    )
    assert cursor.advance(inc(), None, found) == '"2026-11-27T10:00:00.500Z"'


def test_advance_never_moves_backwards_and_keeps_the_cursor_without_items() -> None:
    stored = '"2026-11-27T12:00:00Z"'
    assert cursor.advance(inc(), stored, items({"updated_at": "2026-11-27T11:00:00Z"})) == stored
    assert cursor.advance(inc(), stored, {}) == stored
    assert cursor.advance(inc(), stored, items({"x": 1})) == stored
    later = items({"updated_at": "2026-11-27T13:00:00+01:00"})  # 12:00Z: not later
    assert cursor.advance(inc(), stored, later) == stored


def test_advance_with_a_jmespath_over_the_items() -> None:
    found = items({"id": 3}, {"id": 11}, {"id": 7})
    assert orjson.loads(cursor.advance(inc("max(@[].id)"), None, found) or "") == 11
    assert cursor.advance(inc("[-1].id"), "20", found) == "20"  # 7 < 20: kept
    assert cursor.advance(inc("id"), None, found) == "11"  # a field: its greatest value


@pytest.mark.parametrize(
    ("source", "found", "message"),
    [
        (inc("meta"), items({"meta": {"a": 1}}), "not a string or number"),
        (inc(overlap=5), items({"updated_at": "soon"}), "neither a number nor an ISO 8601"),
        (inc(), items({"updated_at": 5}, {"updated_at": "2026-01-01"}), "mixes"),
    ],
)
def test_advance_refuses_a_cursor_it_could_not_send_back(
    source: Source, found: dict[str, Item], message: str
) -> None:
    with pytest.raises(ExtractError, match=message):
        cursor.advance(source, None, found)


# -- the documented examples ---------------------------------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "sources-http.md"


def doc_examples() -> list[str]:
    """The complete configs (```yaml blocks starting with `sources:` or `http:`) of the doc."""
    blocks = DOC.read_text().split("```yaml\n")[1:]
    return [b.split("```", 1)[0] for b in blocks if b.startswith(("sources:", "http:"))]


def test_every_feature_has_a_documented_example() -> None:
    text = "".join(doc_examples())
    for key in (
        "params:", "body_json:", "body_form:", "body:", "content_type:", "basic:", "bearer:",
        "ca_bundle:", "verify_tls:", "max_body_size:", "type: cursor", "pagination: link",
        "type: next_url", "type: page", "type: offset", "incremental:", "overlap:",
        "max_per_host:", "min_delay:", "jitter:", "mass_delete:", "max_events_per_poll:",
        "failing_after:",
    ):  # fmt: skip
        assert key in text, key


@pytest.mark.parametrize("example", doc_examples())
def test_documented_examples_are_valid(tmp_path: Path, example: str) -> None:
    (tmp_path / "api-token").write_text("t0k3n\n")
    example = example.replace("/etc/pollhook/internal-ca.pem", str(tmp_path / "ca.pem"))
    if "ca.pem" in example:
        import trustme

        trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    path = tmp_path / "sources.yaml"
    path.write_text(example)
    config = load_config(path, env={"LEGACY_PASSWORD": "pw"})
    assert config.sources
