"""The body each chat service documents for its incoming webhooks, within its limits.

- slack: `{"text": ...}`. Slack truncates messages over 40,000 characters and
  asks for 4,000 at most in `text`; `&`, `<` and `>` are control characters
  that must be written `&amp;` `&lt;` `&gt;` in text that is not markup
  (docs.slack.dev/messaging/sending-messages-using-incoming-webhooks,
  docs.slack.dev/messaging/formatting-message-text#escaping,
  api.slack.com/changelog/2018-04-truncating-really-long-messages).
- discord: `{"content": ...}`, "the message contents (up to 2000
  characters)"; `allowed_mentions: {"parse": []}` so no upstream text can
  ping @everyone (discord.com/developers/docs/resources/webhook#execute-webhook).
- teams: a message whose attachment is an Adaptive Card, as Microsoft
  documents for incoming webhooks and Workflows: `type: message`,
  `contentType: application/vnd.microsoft.card.adaptive`, the card with
  `$schema`, `type: AdaptiveCard`, `version: 1.2` and a `body` of TextBlocks;
  the message size limit is 28 KB (learn.microsoft.com/microsoftteams/platform/
  webhooks-and-connectors/how-to/add-incoming-webhook, .../connectors-using).
- mattermost: `{"text": ...}`; posts hold up to 16,383 characters since
  Mattermost 5.0 (developers.mattermost.com/integrate/webhooks/incoming).
  `@channel`, `@all` and `@here` coming from event data are defused.
- google-chat: `{"text": ...}`; a message is at most 32,000 bytes
  (developers.google.com/workspace/chat/quickstart/webhooks,
  .../chat/create-messages). `<` from event data is defused (`<users/all>`).
- ntfy: the message as the plain body, the title in a `Title` header
  (RFC 2047-encoded when not ASCII); a body over 4,096 bytes would become an
  attachment, so it is cut there (docs.ntfy.sh/publish, docs.ntfy.sh/config).

Lengths are counted conservatively: "characters" as UTF-16 units (never fewer
than code points), Teams and Google Chat as bytes of the JSON body.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ._messages import HttpMessage
from ._template import Escape
from ._text import Backoff, Cost, fit, json_bytes, utf8_bytes, utf16_units

SLACK_TEXT_MAX = 4000
DISCORD_CONTENT_MAX = 2000
MATTERMOST_TEXT_MAX = 16383
GOOGLE_CHAT_MESSAGE_MAX = 32000
TEAMS_MESSAGE_MAX = 27000  # bytes: a little under the documented 28 KB
NTFY_BODY_MAX = 4096
TITLE_MAX = 200
_MENTION_RE = re.compile(r"@(?=(?:channel|all|here)\b)", re.IGNORECASE)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]+")
_ZWSP = "\u200b"


def slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_shown(text: str) -> int:
    """Characters as Slack shows them: each escape as the one character it stands for."""
    return len(text) - 4 * text.count("&amp;") - 3 * (text.count("&lt;") + text.count("&gt;"))


def slack_backoff(prefix: str) -> int:
    """A cut inside `&amp;` or inside `<url|label>` markup moves before it."""
    cut = len(prefix)
    amp = prefix.rfind("&", max(0, cut - 5))
    if amp != -1 and ";" not in prefix[amp:]:
        cut = amp
    lt = prefix.rfind("<", 0, cut)
    if lt != -1 and ">" not in prefix[lt:cut]:
        cut = lt
    return cut


def mattermost_escape(text: str) -> str:
    return _MENTION_RE.sub("@" + _ZWSP, text)


def google_chat_escape(text: str) -> str:
    return text.replace("<", "<" + _ZWSP)


@dataclass(frozen=True)
class Preset:
    """One service: how long its text may be, how values are escaped, the body it takes."""

    name: str
    limit: int  # in `cost` units: for Teams, bytes of the whole body
    wrap: Callable[[str, str], HttpMessage] | None  # (title, fitted text) -> the request;
    # None: Teams, whose card has one TextBlock per line and shares its byte budget (`_card`)
    cost: Cost = utf16_units
    escape: Escape | None = None  # for values from events, never the operator's own text
    backoff: Backoff | None = None
    shown: Cost = len  # characters as the reader sees them, for "… (N more characters)"

    def message(self, title: str, text: str) -> HttpMessage:
        """One event: `title` is its headline, `text` its (already escaped) message."""
        if self.wrap is None:
            return self._card([text])
        return self.wrap(title, self.fit(text, self.limit))

    def digest(self, title: str, lines: Sequence[str]) -> HttpMessage:
        """Many events: the title, then one line per listed event."""
        if self.wrap is None:
            return self._card([title, *lines], bold_first=True)
        return self.message(title, "\n".join([title, *lines]))

    def fit(self, text: str, limit: int) -> str:
        return fit(text, limit, self.cost, self.backoff, self.shown)

    def _card(self, texts: Sequence[str], bold_first: bool = False) -> HttpMessage:
        """TextBlocks sharing the byte budget evenly, so a long one cannot crowd out the rest."""
        overhead = len(orjson.dumps(_teams_message(["" for _ in texts], bold_first)))
        share = (self.limit - overhead) // len(texts) + 2  # +2: each "" above counted its quotes
        fitted = [self.fit(text, share) for text in texts]
        return HttpMessage.json(_teams_message(fitted, bold_first))


def _text_body(title: str, text: str) -> HttpMessage:
    return HttpMessage.json({"text": text})


def _discord_body(title: str, text: str) -> HttpMessage:
    return HttpMessage.json({"content": text, "allowed_mentions": {"parse": []}})


def _ntfy_body(title: str, text: str) -> HttpMessage:
    headers = {"Title": header_text(title)} if title else {}
    return HttpMessage(text.encode(), "text/plain; charset=utf-8", headers=headers)


def _teams_message(texts: Sequence[str], bold_first: bool) -> dict[str, Any]:
    blocks: list[dict[str, Any]] = [{"type": "TextBlock", "text": t, "wrap": True} for t in texts]
    if bold_first:
        blocks[0]["weight"] = "Bolder"
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.2",
                    "body": blocks,
                },
            }
        ],
    }


def header_text(text: str) -> str:
    """One header line: control characters dropped, cut to TITLE_MAX, RFC 2047 when not ASCII."""
    text = fit(_CONTROL_RE.sub(" ", text).strip(), TITLE_MAX)
    if text.isascii():
        return text
    return "=?UTF-8?B?" + base64.b64encode(text.encode()).decode() + "?="


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "slack",
            SLACK_TEXT_MAX,
            _text_body,
            escape=slack_escape,
            backoff=slack_backoff,
            shown=slack_shown,
        ),
        Preset("discord", DISCORD_CONTENT_MAX, _discord_body),
        Preset("teams", TEAMS_MESSAGE_MAX, None, cost=json_bytes),  # an Adaptive Card: `_card`
        Preset("mattermost", MATTERMOST_TEXT_MAX, _text_body, escape=mattermost_escape),
        Preset(
            "google-chat",
            GOOGLE_CHAT_MESSAGE_MAX - len(b'{"text":}'),
            _text_body,
            cost=json_bytes,
            escape=google_chat_escape,
        ),
        Preset("ntfy", NTFY_BODY_MAX, _ntfy_body, cost=utf8_bytes),
    )
}
