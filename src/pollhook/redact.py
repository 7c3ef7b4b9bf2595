"""Text about untrusted things, made safe to show: no secrets in URLs, no terminal escapes.

Errors name URLs (aiohttp's exceptions carry `url=...`), and a source's URL or
`params` may carry an API key in its query string or a password in its
userinfo. Every error pollhook records or logs passes through `redact`, so a
key never reaches the log, `status`, the state file or a `source.failing`
webhook. Upstreams and receivers also choose item keys, response bodies and
`Location` headers: `printable` turns their control characters into visible
escapes before a table or a log line shows them, so no upstream can clear an
operator's screen or forge a table row with a newline.
"""

from __future__ import annotations

import re

# scheme://[userinfo@]host...[?query][#fragment]: the userinfo and the query are dropped
_URL = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s/?#@'\"<>]*@)?"
    r"(?P<rest>[^\s?#'\"<>]*)(?P<query>\?[^\s#'\"<>]*)?(?P<frag>#[^\s'\"<>]*)?"
)
# C0 controls, DEL, C1 controls, and the bidirectional overrides that reorder what is shown
_CONTROLS = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), *range(0x202A, 0x202F)]
_CONTROLS += [*range(0x2066, 0x206A)]
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPES = {c: _NAMED.get(chr(c), f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _CONTROLS}


def redact(text: str) -> str:
    """`text` with the userinfo and the query values of every URL in it replaced by `***`.

    Parameter names stay (`?page=***&api_key=***`): they say what was asked
    without saying the key. Fragments are dropped.
    """
    if "://" not in text:
        return text
    return _URL.sub(_redacted, text)


def _redacted(match: re.Match[str]) -> str:
    user = "***@" if match.group("user") else ""
    query = match.group("query")
    if query:
        names = (part.partition("=")[0] for part in query[1:].split("&") if part)
        query = "?" + "&".join(f"{name}=***" for name in names)
    return f"{match.group('head')}{user}{match.group('rest')}{query or ''}"


def printable(text: str) -> str:
    """`text` with control characters as visible escapes (`\\n`, `\\x1b`, `\\u202e`)."""
    if text.isprintable():  # the common case, in C
        return text
    return text.translate(_ESCAPES)


def safe(text: str) -> str:
    """Both: for an error or a header from an upstream or a receiver, before it is shown."""
    return printable(redact(text))
