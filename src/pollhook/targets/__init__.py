"""Chat and notification targets: presets, templates, Apprise, `when:`, digests, `rate:`.

Everything a subscriber's `format:` needs, in one package that imports
nothing from pollhook but `pollhook.errors` and does no I/O except Apprise's
(docs/targets.md is the user's page). jinja2, asyncio and apprise are
imported on first use, so loading a config without them costs nothing.

Config time (compile once, raise TargetConfigError)
    Target.build(format, *, text=None, template=None, when=None) -> Target
        `format` one of FORMATS; `text` a Jinja2 line for a preset or apprise;
        `template` the mapping {body, content_type?, method?, headers?};
        `when` a JMESPath expression. Targets compare equal when their config is.
    parse_rate(value) -> Rate;  default_rate(format) -> Rate | None
    check_apprise_url(url) -> None      Apprise installed, scheme known, URL usable
    check_format(value) -> str

    TargetConfigError (a ConfigError) carries `key`, the subscriber key at
    fault ("format", "text", "template", "template.body",
    "template.headers.X-Name", "when", "rate", "url"), and `line`, the line
    inside a template value (1-based), or None.

Routing time (when an event is built)
    Target.wants(event) -> bool         the `when:` filter; never raises

Attempt time (from the stored event)
    envelope(event_id, stored_body) -> dict        {type, id, timestamp, data}
    Target.renders -> bool              False for standard-webhooks (send stored bytes)
    Target.render(event) -> HttpMessage | Notification           RenderError
    Target.render_digest(events) -> HttpMessage | Notification   RenderError
    HttpMessage(body: bytes, content_type, method, headers); .shown() -> str
    Notification(title, body); .shown() -> str
    AppriseSender(url); await .send(notification, timeout) -> None   NotifyError
    RateLimiter(rate, clock=..., sleep=...); await .wait() -> float
    digest_id(subscriber, first_event_id) -> str   the digest's webhook-id
    redact_url(url) -> str              an Apprise URL as shown anywhere: "tgram://***"

Wiring into config validation (the subscriber section)
    1. Allow the subscriber keys format, text, template, when, digest, rate.
    2. Interpolate `${VAR}` in `text`, the template's strings and `url` as for
       any string, then, in one try block:
           target = Target.build(node.get("format", STANDARD), text=..., template=...,
                                 when=...)
           rate = parse_rate(node["rate"]) if "rate" in node else default_rate(target.format)
           check_apprise_url(url) if target.format == "apprise" else <the http url check>
       and turn TargetConfigError into `self.fail(line, where, str(exc))` with
           top, _, sub = exc.key.partition(".");  line = node.key_lines.get(top, node.line)
           if sub: line = node[top].key_lines.get(sub.split(".")[0], line)
           if exc.line: line += exc.line if "\\n" in <the template's text> else 0
       (a `|` block starts on the line after its key, so template line N is
       key line + N; a one-line value is on the key's line; `>` folds lines,
       so there the line is approximate).
    3. `digest:` is a duration (parse_duration); `Subscriber` gains
       `target: Target = Target()`, `rate: Rate | None`, `digest: float | None`.

Wiring into routing and delivery
    4. build_event: a subscriber with `target.when` gets the event only if
       `target.wants({"type", "id", "timestamp", "data"})`; build that
       envelope only when some subscriber has a `when`.
    5. attempt(): if `sub.target.renders`, render from `envelope(delivery.event_id,
       delivery.body)` (a digest: the envelopes of its events, in order); a
       RenderError is `_decide(..., error=str(exc))`, a failed attempt on the
       retry schedule. An HttpMessage is sent with its method, body,
       content_type and headers (plus webhook-id/-timestamp, and a signature
       of the rendered body when the subscriber has a secret). A Notification
       goes to the subscriber's one AppriseSender (kept per subscriber, made
       anew when its url changes on reload) with `sub.timeout`; NotifyError
       is the attempt's error. Record `message.shown()` as the sent body for
       `deliveries --attempts`. Before sending, `await limiter.wait()` on the
       subscriber's RateLimiter (kept per subscriber, made anew when `rate`
       changes).
    6. Digests: the outbox holds a digest subscriber's deliveries for the
       window, then makes one delivery of them, id `digest_id(sub, first)`.
    7. send-test NAME: render {"type": "pollhook.test", "id": new_event_id(),
       "timestamp": iso_timestamp(now), "data": {"subscriber": NAME}} and send it
       as step 5 does, printing the answer; record nothing.
"""

from __future__ import annotations

from ._apprise import INSTALL_HINT, AppriseSender, check_apprise_url, redact_url
from ._lines import headline, line
from ._messages import HttpMessage, Message, Notification, envelope
from ._rate import DEFAULT_RATES, Rate, RateLimiter, default_rate, parse_rate
from ._target import FORMATS, STANDARD, TEMPLATE_KEYS, Target, check_format, digest_id
from ._template import TEMPLATE_MAX_BYTES
from ._when import When, compile_when

__all__ = [
    "DEFAULT_RATES",
    "FORMATS",
    "INSTALL_HINT",
    "STANDARD",
    "TEMPLATE_KEYS",
    "TEMPLATE_MAX_BYTES",
    "AppriseSender",
    "HttpMessage",
    "Message",
    "Notification",
    "Rate",
    "RateLimiter",
    "Target",
    "When",
    "check_apprise_url",
    "check_format",
    "compile_when",
    "default_rate",
    "digest_id",
    "envelope",
    "headline",
    "line",
    "parse_rate",
    "redact_url",
]
