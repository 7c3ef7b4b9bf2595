"""Chat and notification targets, rendered in-process: lines, presets, templates,
`when:`, digests, `rate:`, and every bad input's one-line error.

Bodies sent to real local servers are in test_targets_servers.py.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from pollhook._yaml import load_yaml
from pollhook.errors import RenderError, TargetConfigError
from pollhook.targets import (
    FORMATS,
    TEMPLATE_MAX_BYTES,
    HttpMessage,
    Notification,
    Rate,
    RateLimiter,
    Target,
    check_apprise_url,
    check_format,
    compile_when,
    default_rate,
    digest_id,
    envelope,
    headline,
    line,
    parse_rate,
)
from pollhook.targets._text import fit, utf16_units

CASES = yaml.safe_load((Path(__file__).parent / "cases" / "lines.yaml").read_text("utf-8"))
PRESETS = ("slack", "discord", "teams", "mattermost", "google-chat", "ntfy")
TEN_MB = 10 * 1024 * 1024


def event(type_: str = "item.updated", **data: Any) -> dict[str, Any]:
    base = {
        "source": "tickets",
        "key": "42",
        "item": {"id": 42, "status": "closed"},
        "previous": {"id": 42, "status": "open"},
        "changes": [{"op": "replace", "path": "/status", "value": "closed"}],
    }
    return {
        "type": type_,
        "id": "msg_0192a3b4c5d6e7f8091a2b3c4d",
        "timestamp": "2026-11-27T16:00:00.123Z",
        "data": {**base, **data},
    }


def body(message: Any) -> Any:
    assert isinstance(message, HttpMessage)
    return orjson.loads(message.body)


def text_of(fmt: str, message: Any) -> str:
    """The message text a person reads, whatever the preset's envelope."""
    if fmt == "ntfy":
        return str(message.body.decode())
    payload = body(message)
    if fmt == "discord":
        return str(payload["content"])
    if fmt == "teams":
        blocks = payload["attachments"][0]["content"]["body"]
        return "\n".join(b["text"] for b in blocks)
    return str(payload["text"])


# -- the default line -----------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_default_line(case: dict[str, Any]) -> None:
    env = {"type": case["type"], "id": "msg_x", "timestamp": "t", "data": case["data"]}
    assert line(env) == case["line"]
    if "headline" in case:
        assert headline(env) == case["headline"]


def test_envelope_is_the_stored_body_plus_the_event_id() -> None:
    stored = orjson.dumps({"type": "item.created", "timestamp": "T", "data": {"source": "s"}})
    assert envelope("msg_1", stored) == {
        "type": "item.created",
        "id": "msg_1",
        "timestamp": "T",
        "data": {"source": "s"},
    }


# -- presets --------------------------------------------------------------------------


def test_every_preset_renders_its_documented_body() -> None:
    ev = event()
    expected = "tickets 42 updated: status open → closed"
    assert body(Target.build("slack").render(ev)) == {"text": expected}
    assert body(Target.build("mattermost").render(ev)) == {"text": expected}
    assert body(Target.build("google-chat").render(ev)) == {"text": expected}
    assert body(Target.build("discord").render(ev)) == {
        "content": expected,
        "allowed_mentions": {"parse": []},
    }
    # the card's documented shape is checked by the receiver in test_targets_servers.py
    assert text_of("teams", Target.build("teams").render(ev)) == expected
    ntfy = Target.build("ntfy").render(ev)
    assert isinstance(ntfy, HttpMessage)
    assert ntfy.body.decode() == expected
    assert ntfy.content_type.startswith("text/plain")
    assert ntfy.headers == {"Title": "tickets 42 updated"}
    assert Target.build("apprise").render(ev) == Notification("tickets 42 updated", expected)


def test_slack_escapes_its_control_characters_in_event_values() -> None:
    ev = event(changes=[{"op": "add", "path": "/title", "value": "<!channel> & <http://x|y>"}])
    text = body(Target.build("slack").render(ev))["text"]
    assert text == "tickets 42 updated: title added: &lt;!channel&gt; &amp; &lt;http://x|y&gt;"


def test_mentions_from_event_data_cannot_ping_a_channel() -> None:
    ev = event(
        changes=[{"op": "add", "path": "/note", "value": "@channel @all @here see <users/all>"}]
    )
    mattermost = body(Target.build("mattermost").render(ev))["text"]
    assert "@channel" not in mattermost and "@all" not in mattermost and "@here" not in mattermost
    assert "@\u200bchannel" in mattermost
    chat = body(Target.build("google-chat").render(ev))["text"]
    assert "<users/all>" not in chat
    assert body(Target.build("discord").render(ev))["allowed_mentions"] == {"parse": []}


def test_ntfy_title_is_one_ascii_header_line() -> None:
    ev = event(key="caf\u00e9\r\nX-Injected: 1")
    headers = Target.build("ntfy").render(ev).headers  # type: ignore[union-attr]
    title = headers["Title"]
    assert title.isascii() and "\n" not in title and "\r" not in title
    assert title.startswith("=?UTF-8?B?") and title.endswith("?=")
    import base64

    decoded = base64.b64decode(title[len("=?UTF-8?B?") : -2]).decode()
    assert decoded == "tickets café X-Injected: 1 updated"


@pytest.mark.parametrize("fmt", PRESETS)
def test_a_10_mb_field_value_stays_within_every_preset_limit(fmt: str) -> None:
    huge = "é" * TEN_MB
    ev = event(
        item={"id": 42, "status": huge},
        changes=[{"op": "replace", "path": "/status", "value": huge}],
    )
    message = Target.build(fmt).render(ev)
    text = text_of(fmt, message)
    assert text.startswith("tickets 42 updated: status open → éééé")
    assert len(message.body) < 32_000  # type: ignore[union-attr]


LIMITS = {  # the service's documented limit, in the unit it counts
    "slack": (4000, utf16_units),
    "discord": (2000, utf16_units),
    "mattermost": (16383, utf16_units),
    "google-chat": (32000, None),  # bytes of the whole message
    "teams": (28000, None),
    "ntfy": (4096, None),
}


@pytest.mark.parametrize("fmt", PRESETS)
@pytest.mark.parametrize(
    ("char", "count"), [("a", 1_000_000), ("é", 40_000), ("😀", 40_000), ("&", 40_000)]
)
def test_text_template_over_the_limit_is_cut_with_a_count(fmt: str, char: str, count: int) -> None:
    """A `text:` printing many characters: cut on a character, saying how many are left.

    A million is past the template's 256 KiB output cap as well as every limit.
    """
    ev = event(item={"blob": char * count})
    message = Target.build(fmt, text="{{ event.data.item.blob }}").render(ev)
    text = text_of(fmt, message)
    limit, measure = LIMITS[fmt]
    assert (measure(text) if measure else len(message.body)) <= limit  # type: ignore[union-attr]
    head, _, tail = text.rpartition("… (")
    assert tail.endswith(" more characters)")
    shown = head.replace("&amp;", "&")  # Slack's escape is whole or absent, never split
    assert set(shown) == {char}
    hidden = int(tail.split(" ")[0].replace(",", ""))
    assert len(shown) + hidden == count


def test_a_cut_never_splits_an_escape_or_a_joined_emoji() -> None:
    from pollhook.targets._presets import slack_backoff, slack_shown

    text = "ab&amp;" + "x" * 30  # room for 5 characters would end inside "&amp;"
    limit = 5 + len("… (37 more characters)")
    assert fit(text, limit) == "ab&am… (32 more characters)"
    cut = fit(text, limit, backoff=slack_backoff, shown=slack_shown)
    assert cut == "ab… (31 more characters)"  # "&amp;" is one character to the reader
    family = "a" + "👨\u200d👩\u200d👧" * 3
    cut = fit(family, 6 + len("… (99 more characters)"))
    assert cut.startswith("a👨\u200d👩\u200d👧") and "\u200d…" not in cut
    accent = "e\u0301" * 10  # e + combining acute
    cut = fit(accent, 5 + len("… (99 more characters)"))
    assert not cut.split("…")[0].endswith("e")  # no accent left without its letter


def test_teams_digest_shares_its_byte_budget_between_blocks() -> None:
    events = [event(key=str(i), item={"blob": "x" * 100_000}) for i in range(12)]
    target = Target.build("teams", text="{{ event.data.item.blob }}")
    message = target.render_digest(events)
    assert len(message.body) <= 28_000  # type: ignore[union-attr]
    blocks = body(message)["attachments"][0]["content"]["body"]
    assert blocks[0]["text"] == "12 changes in tickets"
    assert blocks[0]["weight"] == "Bolder"
    assert len(blocks) == 12  # title, ten events, "and 2 more"
    assert blocks[-1]["text"] == "and 2 more"
    assert all(b["text"].startswith("• xxx") for b in blocks[1:11])


# -- text: and template ---------------------------------------------------------------


def test_text_overrides_the_line_and_escapes_only_values() -> None:
    target = Target.build(
        "slack", text="*{{ event.data.key }}* is <{{ event.data.item.status }}|now>"
    )
    assert body(target.render(event(item={"status": "a&b"})))["text"] == "*42* is <a&amp;b|now>"


def test_text_gets_the_default_line_too() -> None:
    target = Target.build("discord", text="🔔 {{ line }}")
    assert body(target.render(event()))["content"] == "🔔 tickets 42 updated: status open → closed"


def test_template_renders_body_method_and_headers() -> None:
    target = Target.build(
        "template",
        template={
            "body": '{"msg": {{ line | json }}, "key": {{ event.data.key | json }}, "n": 1}',
            "method": "put",
            "headers": {"X-Event": "{{ event.type }}"},
        },
    )
    message = target.render(event())
    assert isinstance(message, HttpMessage)
    assert message.method == "PUT"
    assert message.content_type == "application/json"
    assert message.headers == {"X-Event": "item.updated"}
    assert body(message) == {
        "msg": "tickets 42 updated: status open → closed",
        "key": "42",
        "n": 1,
    }


def test_json_filter_keeps_hostile_values_inside_their_string() -> None:
    target = Target.build("template", template={"body": '{"text": {{ event.data.key | json }}}'})
    hostile = '", "admin": true, "x": "'
    assert body(target.render(event(key=hostile))) == {"text": hostile}


def test_an_unfiltered_value_in_a_json_body_is_a_config_error_naming_its_line() -> None:
    source = '{\n  "a": {{ event.type | json }},\n  "text": "{{ event.data.key }}"\n}'
    with pytest.raises(TargetConfigError) as err:
        Target.build("template", template={"body": source})
    assert err.value.key == "template.body"
    assert err.value.line == 3
    assert "| json" in str(err.value)


def test_a_json_body_refuses_unfiltered_values_at_render_time_too() -> None:
    """The compile-time check has a runtime twin (`finalize`), in case one slips past it."""
    from pollhook.targets._template import _environment

    template = _environment(None, json_body=True).from_string('{"a": {{ x }}}')
    with pytest.raises(RenderError, match=r"must go through '\| json'"):
        template.render(x="1")


def test_a_template_rendering_invalid_json_is_a_render_error() -> None:
    target = Target.build("template", template={"body": '{"a": {{ event.type | json }},}'})
    with pytest.raises(RenderError, match="rendered invalid JSON") as err:
        target.render(event())
    assert "\n" not in str(err.value)


def test_non_json_content_types_take_text() -> None:
    target = Target.build(
        "template",
        template={"body": "key={{ event.data.key | urlencode }}", "content_type": "text/plain"},
    )
    message = target.render(event(key="a b"))
    assert message.body == b"key=a%20b"  # type: ignore[union-attr]


SYNTAX = """\
subscribers:
  - name: hook
    format: template
    template:
      body: |
        {
          "a": {{ event.type | json }},
          "b": {{ event.data.key | json }
        }
"""


def test_a_syntax_error_names_the_template_line_the_validator_can_place(tmp_path: Path) -> None:
    path = tmp_path / "sources.yaml"
    path.write_text(SYNTAX)
    spec = load_yaml(path)["subscribers"][0]["template"]
    with pytest.raises(TargetConfigError) as err:
        Target.build("template", template=dict(spec))
    assert err.value.key == "template.body"
    assert "template syntax error" in str(err.value)
    assert err.value.line == 3
    # a `|` block starts on the line after its key: key line + template line is the YAML line
    yaml_line = spec.key_lines["body"] + err.value.line
    assert SYNTAX.splitlines()[yaml_line - 1].strip() == '"b": {{ event.data.key | json }'


def test_render_errors_are_recorded_failures_with_the_template_line() -> None:
    undefined = Target.build("discord", text="first\n{{ event.data.item.nope }}")
    with pytest.raises(RenderError, match=r"template line 2: .*nope"):
        undefined.render(event())
    sandbox = Target.build("discord", text="{{ event.__class__.__mro__ }}")
    with pytest.raises(RenderError, match=r"unsafe|undefined"):
        sandbox.render(event())
    mutate = Target.build("discord", text="{{ event.data.changes.append(1) }}")
    with pytest.raises(RenderError, match="unsafe"):
        mutate.render(event())


def test_template_output_is_capped() -> None:
    target = Target.build("template", template={"body": "{{ event.data.item | json }}"})
    with pytest.raises(RenderError, match="over the 256 KiB limit"):
        target.render(event(item={"blob": "x" * TEN_MB}))
    loop = Target.build(
        "template",
        template={
            "body": "[{% for i in range(100000) %}{{ event.data.key | json }},{% endfor %}1]"
        },
    )
    with pytest.raises(RenderError, match="over the 256 KiB limit"):
        loop.render(event(key="k" * 100))
    assert TEMPLATE_MAX_BYTES == 256 * 1024


def test_a_count_from_the_data_cannot_blow_up_a_string() -> None:
    target = Target.build("discord", text="{{ '★' * event.data.item.rating }}")
    with pytest.raises(RenderError, match="'\\*' would make a value over"):
        target.render(event(item={"rating": 10**9}))
    assert body(target.render(event(item={"rating": 3})))["content"] == "★★★"


def test_a_digest_template_gets_events_and_count_in_order() -> None:
    target = Target.build(
        "template",
        template={
            "body": '{"n": {{ count | json }}, "keys": {{ events | map(attribute="data.key")'
            ' | list | json }}, "title": {{ title | json }}}'
        },
    )
    events = [event(key=str(k)) for k in (3, 1, 2)]
    assert body(target.render_digest(events)) == {
        "n": 3,
        "keys": ["3", "1", "2"],
        "title": "3 changes in tickets",
    }
    single = Target.build("template", template={"body": "{{ event.id | json }}"})
    with pytest.raises(RenderError, match="digest's template gets `events`"):
        single.render_digest(events)


# -- digests --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [*PRESETS, "apprise"])
def test_a_digest_lists_the_first_ten_in_detection_order(fmt: str) -> None:
    events = [event(key=str(i)) for i in range(12)]
    message = Target.build(fmt).render_digest(events)
    text = message.body if isinstance(message, Notification) else text_of(fmt, message)
    if isinstance(message, Notification):
        assert message.title == "12 changes in tickets"
    elif fmt == "ntfy":
        assert message.headers["Title"] == "12 changes in tickets"
    lines = text.splitlines()
    listed = [ln for ln in lines if ln.startswith("• ")]
    assert listed == [f"• tickets {i} updated: status open → closed" for i in range(10)]
    assert lines[-1] == "and 2 more"


def test_a_digest_of_one_reads_like_the_event() -> None:
    target = Target.build("slack")
    assert target.render_digest([event()]) == target.render(event())


def test_a_digest_with_health_events_counts_events() -> None:
    events = [event(), event("source.failing", error="HTTP 500", source="orders")]
    text = body(Target.build("slack").render_digest(events))["text"]
    assert text.splitlines()[0] == "2 events in orders, tickets"


def test_digest_id_is_stable_and_per_subscriber() -> None:
    first = "msg_0192a3b4c5d6e7f8091a2b3c4d"
    assert digest_id("chat", first) == digest_id("chat", first)
    assert digest_id("chat", first) != digest_id("mail", first)
    assert digest_id("chat", first) != digest_id("chat", "msg_0192a3b4c5d6e7f8091a2b3c4e")
    assert digest_id("chat", first).startswith("dig_0192a3b4c5d6")
    later = digest_id("chat", "msg_0192a3b4c5d7000000000000000")
    assert sorted([later, digest_id("chat", first)])[0] == digest_id("chat", first)


# -- when: ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "wanted"),
    [
        ("data.changes[?path=='/status']", True),
        ("data.changes[?path=='/price']", False),  # an empty list is false
        ("type == 'item.created'", False),
        ("data.item.status", True),
        ("data.item.missing", False),  # null
        ("`0`", True),  # JMESPath: 0 is true
        ('`""`', False),
        ("`{}`", False),
        ("length(data.changes) > `0`", True),
    ],
)
def test_when_is_truthy_by_jmespath_rules(expression: str, wanted: bool) -> None:
    assert Target.build("slack", when=expression).wants(event()) is wanted


def test_when_failing_at_run_time_is_false_and_never_raises() -> None:
    when = compile_when("length(data.item.id) > `1`")  # length() of a number: a type error
    assert when.matches(event()) is False


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("data.changes[?path=='/price'", "bad JMESPath"),
        ("lenght(data.changes)", "unknown function lenght() (did you mean length()?)"),
        ("length(data, type)", "length() takes 1 argument(s), got 2"),
        ("", "must be a JMESPath expression"),
    ],
)
def test_when_that_is_not_valid_jmespath_is_a_config_error(expression: str, fragment: str) -> None:
    with pytest.raises(TargetConfigError) as err:
        Target.build("slack", when=expression)
    assert fragment in str(err.value)
    assert err.value.key == "when"
    assert "\n" not in str(err.value)


# -- rate: ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "interval"),
    [("1/s", 1.0), ("30/m", 2.0), ("100/h", 36.0), ("2 / min", 30.0), ("0.5/s", 2.0)],
)
def test_rates_parse_to_an_interval(text: str, interval: float) -> None:
    assert parse_rate(text).interval == pytest.approx(interval)


@pytest.mark.parametrize("value", ["fast", "1/fortnight", "0/s", "5000/s", "1", 5, None])
def test_a_rate_that_is_not_a_rate_is_a_config_error(value: Any) -> None:
    with pytest.raises(TargetConfigError) as err:
        parse_rate(value)
    assert err.value.key == "rate"
    assert "'rate'" in str(err.value)


def test_rate_fast_says_what_a_rate_looks_like() -> None:
    with pytest.raises(TargetConfigError, match=r"'fast' is not a rate like 1/s, 30/m or 100/h"):
        parse_rate("fast")


def test_slack_defaults_to_one_message_a_second() -> None:
    assert default_rate("slack") == Rate(1.0, 1.0)
    assert default_rate("discord") is None
    assert default_rate("teams") is None  # 4/s, but also 100/h: no default fits both
    assert str(parse_rate("30/m")) == "30/m"


def test_rate_limiter_spaces_requests_without_sleeping() -> None:
    now = [100.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    limiter = RateLimiter(parse_rate("2/s"), clock=lambda: now[0], sleep=sleep)

    async def main() -> list[float]:
        waits = [await limiter.wait() for _ in range(4)]  # a burst at one instant
        now[0] += 10.0  # a long pause: the next one goes at once, no stored-up burst
        waits.append(await limiter.wait())
        waits.append(await limiter.wait())
        return waits

    assert asyncio.run(main()) == [0.0, 0.5, 1.0, 1.5, 0.0, 0.5]
    assert slept == [0.5, 1.0, 1.5, 0.5]


# -- formats and Apprise at config time -----------------------------------------------


def test_unknown_format_says_did_you_mean() -> None:
    with pytest.raises(
        TargetConfigError, match="unknown format 'slak' \\(did you mean 'slack'\\?\\)"
    ):
        check_format("slak")
    with pytest.raises(TargetConfigError, match="known: standard-webhooks, slack"):
        check_format("carrier-pigeon")
    assert FORMATS[0] == "standard-webhooks"


@pytest.mark.parametrize(
    ("kwargs", "key", "fragment"),
    [
        ({"format": "template"}, "format", "needs a 'template'"),
        (
            {"format": "slack", "template": {"body": "{}"}},
            "template",
            "only for 'format: template'",
        ),
        ({"format": "template", "text": "x", "template": {"body": "1"}}, "text", "'text' is for"),
        ({"format": "template", "template": {"bdy": "1"}}, "template.bdy", "did you mean 'body'"),
        (
            {"format": "template", "template": {"body": "1", "method": "GET"}},
            "template.method",
            "POST",
        ),
        (
            {"format": "template", "template": {"body": "1", "headers": {"Webhook-Id": "x"}}},
            "template.headers.Webhook-Id",
            "set by pollhook",
        ),
        (
            {"format": "template", "template": {"body": "1", "content_type": "json"}},
            "template.content_type",
            "media type",
        ),
        ({"format": "slack", "text": "{% if %}"}, "text", "template syntax error"),
    ],
)
def test_bad_target_settings_name_their_key(
    kwargs: dict[str, Any], key: str, fragment: str
) -> None:
    fmt = kwargs.pop("format")
    with pytest.raises(TargetConfigError) as err:
        Target.build(fmt, **kwargs)
    assert err.value.key == key
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_targets_compare_by_their_config() -> None:
    """A SIGHUP reload compares subscribers: the same settings must compare equal."""
    assert Target.build("slack", text="{{ line }}", when="type") == Target.build(
        "slack", text="{{ line }}", when="type"
    )
    assert Target.build("slack", text="a") != Target.build("slack", text="b")


def test_apprise_url_with_a_typo_in_its_scheme() -> None:
    with pytest.raises(
        TargetConfigError, match=r"no service 'jsn://' \(did you mean 'json://'\?\)"
    ):
        check_apprise_url("jsn://127.0.0.1:8000/hook")


def test_apprise_url_apprise_cannot_use() -> None:
    with pytest.raises(TargetConfigError, match="cannot use this tgram:// URL") as err:
        check_apprise_url("tgram://")
    assert err.value.key == "url"


def test_apprise_not_installed_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "apprise", None)  # what `import apprise` sees without it
    with pytest.raises(TargetConfigError) as err:
        check_apprise_url("mailto://user:pass@example.com")
    assert str(err.value) == (
        "format 'apprise' needs the Apprise library: pip install 'pollhook[apprise]'"
    )


def test_every_example_in_the_docs_builds_and_renders() -> None:
    """docs/targets.md's YAML examples compile, and render one event and a digest."""
    docs = (Path(__file__).parents[1] / "docs" / "targets.md").read_text("utf-8")
    blocks = [b.split("```")[0] for b in docs.split("```yaml\n")[1:]]
    subscribers = [
        s for b in blocks for s in (yaml.safe_load(textwrap.dedent(b)) or {}).get("subscribers", [])
    ]
    assert subscribers, "docs/targets.md has YAML examples"
    for sub in subscribers:
        target = Target.build(
            sub.get("format", "standard-webhooks"),
            text=sub.get("text"),
            template=sub.get("template"),
            when=sub.get("when"),
        )
        if "rate" in sub:
            parse_rate(sub["rate"])
        if target.renders:
            item = {"id": 42, "name": "Widget", "price": 12, "priority": "urgent"}
            ev = event(item=item, previous={**item, "price": 10})
            if "digest" not in sub:  # a digest template gets `events`, not `event`
                target.render(ev)
            if "digest" in sub or target.template is None:
                target.render_digest([ev, event(key="43", item=item, previous=item)])
