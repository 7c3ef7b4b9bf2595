"""Request bodies of the API, checked against the OpenAPI document, with readable 400s.

The JSON Schema in `openapi.py` decides what is valid (jsonschema runs it);
this module turns its first complaint into one line naming the field, and
adds the checks a schema cannot make: sources that exist, a `when` that
compiles, a URL of an acceptable form whose query leaves `hub.*` to the
verification. No message repeats the URL, whose
query may hold the receiver's own secret.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from pollhook.errors import BadRequest, RefusedURLError

from .lease import grant_lease
from .openapi import CREATE_SCHEMA, RENEW_SCHEMA
from .ssrf import check_form
from .verify import topic

_CREATE = Draft202012Validator(CREATE_SCHEMA)
_RENEW = Draft202012Validator(RENEW_SCHEMA)
_TYPES = {
    "object": "a JSON object",
    "array": "a list",
    "string": "a string",
    "integer": "a whole number",
}
_SIMPLE = {
    "minLength": "must not be empty",
    "maxLength": "is longer than {} characters",
    "uniqueItems": "lists the same value twice",
    "minItems": "must list at least {}",
    "maxItems": "must list at most {}",
    "minimum": "must be at least {}",
}
_PATTERNS = {
    "url": "must start with http:// or https://",
    "sources": "a source name has only letters, digits, '-' and '_'",
}


@dataclass(frozen=True)
class NewSubscription:
    """A valid `POST /v1/subscriptions` body, with the lease pollhook grants."""

    url: str
    sources: tuple[str, ...] | None
    events: tuple[str, ...] | None
    format: str
    when: str | None
    lease_seconds: int

    @property
    def topic(self) -> str:
        """`hub.topic` of its verification."""
        return topic(self.sources)


def parse_create(
    body: bytes, known_sources: Collection[str], when_problem: Callable[[str], str | None]
) -> NewSubscription:
    """The subscription a request body asks for; BadRequest (400) naming the field otherwise.

    `known_sources` are the configured source names; `when_problem` says in
    one line why an expression is not usable JMESPath, or None (the config's
    own check, so `when:` means the same in the API and in YAML). The URL's
    form is checked here; its addresses are checked by `ssrf.check_url`,
    which the handler awaits next.
    """
    doc = _load(body, _CREATE)
    url: str = doc["url"]
    try:
        parsed = check_form(url)
    except RefusedURLError as exc:
        raise BadRequest(str(exc)) from None
    reserved = sorted({name for name in parsed.query if name.lower().startswith("hub.")})
    if reserved:
        raise BadRequest(f"url: the query parameter {reserved[0]!r} is reserved for verification")
    sources = doc.get("sources")
    for name in sources or ():
        if name not in known_sources:
            raise BadRequest(
                f"sources: no source is named {name!r}{_did_you_mean(name, known_sources)}"
            )
    when = doc.get("when")
    problem = None if when is None else when_problem(when)
    if problem is not None:
        raise BadRequest(f"when: bad JMESPath: {problem}")
    return NewSubscription(
        url=url,
        sources=tuple(sources) if sources else None,
        events=tuple(doc["events"]) if "events" in doc else None,
        format=doc.get("format", "standard-webhooks"),
        when=when,
        lease_seconds=grant_lease(_whole(doc.get("lease_seconds"))),
    )


def parse_renew(body: bytes) -> int:
    """The lease granted for a renewal; an empty body asks for the default."""
    doc = _load(body, _RENEW) if body.strip() else {}
    return grant_lease(_whole(doc.get("lease_seconds")))


def _load(body: bytes, validator: Draft202012Validator) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    error = best_match(validator.iter_errors(doc))
    if error is not None:
        raise BadRequest(message(error))
    assert isinstance(doc, dict)  # the schema says so
    return doc


def _whole(value: Any) -> int | None:
    """JSON Schema counts 3600.0 as an integer; Python should see 3600."""
    return None if value is None else int(value)


def message(error: ValidationError) -> str:
    """One line for a schema violation: the field, then what is wrong, without its value
    where that could be a secret (the URL)."""
    path = _path(error.absolute_path)
    field = f"{path}: " if path else ""
    top = str(error.absolute_path[0]) if error.absolute_path else ""
    keyword = error.validator
    instance: Any = error.instance
    expected: Any = error.validator_value
    schema: Any = error.schema
    if keyword == "required":
        missing = [name for name in expected if name not in instance]
        return f"{field}missing field {missing[0]!r}"
    if keyword == "additionalProperties":
        known = list(schema.get("properties", {}))
        extra = sorted(name for name in instance if name not in known)[0]
        return f"{field}unknown field {extra!r}{_did_you_mean(extra, known)}"
    if keyword == "type":
        if not path:
            return "the body must be a JSON object"
        return f"{field}must be {_TYPES.get(str(expected), str(expected))}"
    if keyword == "pattern":
        return f"{field}{_PATTERNS.get(top, 'has characters that are not allowed')}"
    if keyword == "enum":
        shown = repr(instance) if len(repr(instance)) <= 100 else "the value"
        return f"{field}{shown} is not one of: {', '.join(map(str, expected))}"
    if keyword in _SIMPLE:
        return field + _SIMPLE[keyword].format(expected)
    return f"{field}is not valid ({keyword})"


def _path(parts: Iterable[str | int]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
