"""A subscriber's format, compiled once at config load, rendered at every attempt.

`Target` holds what the config said (format, `text:`, `template:`, `when:`)
in compiled form; it renders one event, or a digest of many, into the
HttpMessage or Notification to send. Nothing here does I/O: the delivery
worker sends what comes out, and records a RenderError as a failed attempt.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import TargetConfigError
from ._lines import DIGEST_LISTED, digest_more, digest_title, headline, line
from ._messages import HttpMessage, Message, Notification
from ._presets import PRESETS
from ._template import (
    Compiled,
    check_content_type,
    check_method,
    compile_headers,
    compile_json,
    compile_text,
    is_json_type,
    render_headers,
)
from ._text import fit
from ._when import When, compile_when

STANDARD = "standard-webhooks"
FORMATS = (STANDARD, *PRESETS, "template", "apprise")
TEMPLATE_KEYS = ("body", "content_type", "method", "headers")
APPRISE_BODY_MAX = 32768  # characters; Apprise splits or cuts further for each service
Envelope = Mapping[str, Any]


def check_format(value: Any) -> str:
    """A known `format:` name, or TargetConfigError with a "did you mean"."""
    if isinstance(value, str) and value in FORMATS:
        return value
    close = difflib.get_close_matches(str(value), FORMATS, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(FORMATS)})"
    raise TargetConfigError(f"'format': unknown format {value!r}{hint}", key="format")


@dataclass(frozen=True)
class BodyTemplate:
    """`format: template`: the body, its content type and method, and header templates."""

    body: Compiled
    content_type: str = "application/json"
    method: str = "POST"
    headers: tuple[tuple[str, Compiled], ...] = ()

    def render(self, context: Mapping[str, Any]) -> HttpMessage:
        body = self.body.render(context)
        headers = render_headers(self.headers, context)
        return HttpMessage(body.encode(), self.content_type, self.method, headers)


def compile_template(spec: Any) -> BodyTemplate:
    """The `template:` mapping (`body`, optional `content_type`, `method`, `headers`).

    The body is a JSON body (values only through `| json`, output must parse)
    when the content type is JSON, which it is by default.
    """
    if not isinstance(spec, Mapping):
        raise TargetConfigError(
            "'template' must be a mapping with 'body' and optional 'content_type', 'method',"
            " 'headers'",
            key="template",
        )
    for name in spec:
        if name not in TEMPLATE_KEYS:
            close = difflib.get_close_matches(str(name), TEMPLATE_KEYS, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise TargetConfigError(
                f"'template': unknown key {name!r}{hint}", key=f"template.{name}"
            )
    if "body" not in spec:
        raise TargetConfigError("'template' needs a 'body'", key="template")
    content_type = check_content_type(spec.get("content_type", "application/json"))
    headers = spec.get("headers")
    if headers is not None and not isinstance(headers, Mapping):
        raise TargetConfigError("'template.headers' must be a mapping", key="template.headers")
    body = spec["body"]
    return BodyTemplate(
        body=(
            compile_json(body)
            if is_json_type(content_type)
            else compile_text(body, None, "template.body")
        ),
        content_type=content_type,
        method=check_method(spec.get("method", "POST")),
        headers=compile_headers(headers),
    )


@dataclass(frozen=True)
class Target:
    """How one subscriber's events are rendered and filtered."""

    format: str = STANDARD
    text: Compiled | None = None
    template: BodyTemplate | None = None
    when: When | None = None

    @classmethod
    def build(
        cls, format: Any = STANDARD, *, text: Any = None, template: Any = None, when: Any = None
    ) -> Target:
        """From the subscriber's config values (None when a key is absent).

        Raises TargetConfigError whose `key` names the subscriber key at fault.
        """
        fmt = check_format(format)
        if template is not None and fmt != "template":
            raise TargetConfigError("'template' is only for 'format: template'", key="template")
        if fmt == "template" and template is None:
            raise TargetConfigError("'format: template' needs a 'template'", key="format")
        if text is not None and fmt in (STANDARD, "template"):
            where = "the template's body" if fmt == "template" else "a preset or apprise"
            raise TargetConfigError(f"'text' is for {where}, not 'format: {fmt}'", key="text")
        preset = PRESETS.get(fmt)
        return cls(
            format=fmt,
            text=None if text is None else compile_text(text, preset.escape if preset else None),
            template=None if template is None else compile_template(template),
            when=None if when is None else compile_when(when),
        )

    @property
    def renders(self) -> bool:
        """False for Standard Webhooks: the worker sends the stored bytes as they are."""
        return self.format != STANDARD

    def wants(self, event: Envelope) -> bool:
        """The `when:` filter (always true without one); never raises."""
        return self.when is None or self.when.matches(event)

    def render(self, event: Envelope) -> Message:
        """The request or notification for one event; RenderError if a template fails."""
        if self.template is not None:
            return self.template.render({"event": event, "line": line(event)})
        title, text = headline(event), self._text(event)
        if self.format == "apprise":
            return Notification(title, fit(text, APPRISE_BODY_MAX))
        return PRESETS[self.format].message(title, text)

    def render_digest(self, events: Sequence[Envelope]) -> Message:
        """One message for many events, in the order given (detection order).

        Presets and apprise list the first DIGEST_LISTED events' lines under
        "N changes in SOURCE" and end with "and N more"; a template gets
        `events`, `count`, `title` and `lines` (every event's default line).
        """
        if not events:
            raise ValueError("a digest needs at least one event")
        title = digest_title(events)
        if self.template is not None:
            context = {
                "events": list(events),
                "count": len(events),
                "title": title,
                "lines": [line(e) for e in events],
            }
            return self.template.render(context)
        if len(events) == 1:
            return self.render(events[0])
        lines = ["• " + self._text(e) for e in events[:DIGEST_LISTED]]
        more = digest_more(len(events))
        if more:
            lines.append(more)
        if self.format == "apprise":
            return Notification(title, fit("\n".join(lines), APPRISE_BODY_MAX))
        return PRESETS[self.format].digest(title, lines)

    def _text(self, event: Envelope) -> str:
        """The event's message: `text:` rendered (values escaped), or the default line."""
        preset = PRESETS.get(self.format)
        if self.text is not None:
            shown = preset.shown if preset else len
            return self.text.render({"event": event, "line": line(event)}, cut=True, shown=shown)
        escape = preset.escape if preset else None
        return escape(line(event)) if escape else line(event)


def digest_id(subscriber: str, first_event_id: str) -> str:
    """The `webhook-id` of a digest: the same on every retry and replay of that digest.

    Derived from the subscriber and the digest's first event, the two things
    that fix which digest it is; it keeps the first event's time part, so
    ids still sort by time, under a `dig_` prefix that no event id has.
    """
    tail = hashlib.sha256(f"{subscriber}\0{first_event_id}".encode()).hexdigest()[:14]
    return f"dig_{first_event_id.removeprefix('msg_')[:12]}{tail}"
