"""The OpenAPI document is valid OpenAPI 3.1, and the body validator agrees with it field by field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from pollhook import errors
from pollhook.config import jmespath_problem
from pollhook.server.lease import DEFAULT_LEASE, MAX_LEASE
from pollhook.server.openapi import CREATE_SCHEMA, DOCUMENT, EVENTS, FORMATS
from pollhook.server.validate import parse_create, parse_renew
from pollhook.server.webhook_secrets import new_secret

SOURCES = {"tickets", "orders"}
SERVED: dict[str, Any] = json.loads(json.dumps(DOCUMENT))  # what /v1/openapi.json will send
SCHEMAS = SERVED["components"]["schemas"]
URL = "https://hooks.example.com/in"


def create(doc: Any) -> Any:
    return parse_create(json.dumps(doc).encode(), SOURCES, jmespath_problem)


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(SERVED)
    assert SERVED["openapi"] == "3.1.0"
    assert SERVED["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}


def test_every_endpoint_of_the_api_is_described() -> None:
    operations = {
        (method.upper(), path)
        for path, item in SERVED["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert operations == {
        ("POST", "/v1/subscriptions"),
        ("GET", "/v1/subscriptions"),
        ("GET", "/v1/subscriptions/{id}"),
        ("DELETE", "/v1/subscriptions/{id}"),
        ("POST", "/v1/subscriptions/{id}/rotate-secret"),
        ("POST", "/v1/subscriptions/{id}/renew"),
        ("GET", "/v1/openapi.json"),
    }
    created = SERVED["paths"]["/v1/subscriptions"]["post"]["responses"]
    assert set(created) == {"202", "400", "401", "403", "409", "429"}


def test_error_answers_match_the_error_classes() -> None:
    classes = {
        "400": errors.BadRequest("x"),
        "401": errors.Unauthorized("x"),
        "403": errors.Forbidden("x"),
        "404": errors.NotFound("x"),
        "409": errors.Conflict("x"),
        "429": errors.RateLimited("x", retry_after=3),
    }
    responses = SERVED["components"]["responses"]
    assert set(responses) == set(classes)
    for code, exc in classes.items():
        assert exc.status == int(code)
        assert set(responses[code].get("headers", {})) == set(exc.headers())
        body = {"error": str(exc)}
        Draft202012Validator(SCHEMAS["Error"]).validate(body)


def test_a_created_answer_fits_its_schema() -> None:
    answer = {"id": "sub_1", "status": "pending", "secret": new_secret(), "lease_seconds": 60}
    Draft202012Validator(SCHEMAS["Created"]).validate(answer)
    with pytest.raises(Exception, match="'pending' was expected"):
        Draft202012Validator(SCHEMAS["Created"]).validate({**answer, "status": "active"})


GOOD = [
    {"url": URL},
    {"url": "http://hooks.example.com:8080/in?team=blue"},
    {"url": URL, "sources": ["tickets"], "events": ["item.created", "source.failing"]},
    {"url": URL, "format": "slack", "when": "data.changes[?path=='/price']"},
    {"url": URL, "lease_seconds": 1},
    {"url": URL, "lease_seconds": 3600.0},
    {"url": "HTTPS://HOOKS.EXAMPLE.COM/in"},
]


@pytest.mark.parametrize("doc", GOOD)
def test_good_bodies_pass_the_schema_and_the_validator(doc: dict[str, Any]) -> None:
    assert Draft202012Validator(SCHEMAS["CreateSubscription"]).is_valid(doc)
    new = create(doc)
    assert new.url == doc["url"]
    assert new.sources == (tuple(doc["sources"]) if "sources" in doc else None)
    assert new.events == (tuple(doc["events"]) if "events" in doc else None)
    assert new.format == doc.get("format", "standard-webhooks")
    assert new.when == doc.get("when")
    assert new.lease_seconds == int(doc.get("lease_seconds", DEFAULT_LEASE))


def test_the_defaults_and_the_granted_lease() -> None:
    new = create({"url": URL, "lease_seconds": MAX_LEASE * 10})
    assert new.lease_seconds == MAX_LEASE
    assert new.topic == "*"
    assert create({"url": URL, "sources": ["orders", "tickets"]}).topic == "orders,tickets"
    assert parse_renew(b"") == DEFAULT_LEASE
    assert parse_renew(b'{"lease_seconds": 60}') == 60


# (body, message, whether the document's schema alone refuses it too)
BAD: list[tuple[Any, str, bool]] = [
    ("[]", "the body must be a JSON object", True),
    ("null", "the body must be a JSON object", True),
    ({}, "missing field 'url'", True),
    ({"url": URL, "sorces": ["tickets"]}, "unknown field 'sorces' (did you mean 'sources'?)", True),
    ({"url": 5}, "url: must be a string", True),
    ({"url": ""}, "url: must not be empty", True),
    ({"url": "ftp://h.example/?k=SECRETVALUE"}, "url: must start with http:// or https://", True),
    ({"url": "https://h.example/" + "a" * 2048}, "url: is longer than 2048 characters", True),
    ({"url": "https://u:SECRETVALUE@h.example/"},
     "url refused for host 'h.example': a user name or password in the URL is not allowed", False),
    ({"url": "https://h.example/in?hub.challenge=SECRETVALUE"},
     "url: the query parameter 'hub.challenge' is reserved for verification", False),
    ({"url": "https://h.example/in?HUB.MODE=x"},
     "url: the query parameter 'HUB.MODE' is reserved for verification", False),
    ({"url": URL, "sources": "tickets"}, "sources: must be a list", True),
    ({"url": URL, "sources": []}, "sources: must list at least 1", True),
    ({"url": URL, "sources": ["tickets", "tickets"]}, "sources: lists the same value twice", True),
    ({"url": URL, "sources": ["a b"]},
     "sources[0]: a source name has only letters, digits, '-' and '_'", True),
    ({"url": URL, "sources": [7]}, "sources[0]: must be a string", True),
    ({"url": URL, "sources": ["tickts"]},
     "sources: no source is named 'tickts' (did you mean 'tickets'?)", False),
    ({"url": URL, "events": ["item.made"]},
     "events[0]: 'item.made' is not one of: " + ", ".join(EVENTS), True),
    ({"url": URL, "events": []}, "events: must list at least 1", True),
    ({"url": URL, "events": "item.created"}, "events: must be a list", True),
    ({"url": URL, "events": ["item.created", "item.created"]},
     "events: lists the same value twice", True),
    ({"url": URL, "format": "template"},
     "format: 'template' is not one of: " + ", ".join(FORMATS), True),
    ({"url": URL, "format": "apprise"}, "format: 'apprise' is not one of", True),
    ({"url": URL, "format": "x" * 200}, "format: the value is not one of", True),
    ({"url": URL, "when": ""}, "when: must not be empty", True),
    ({"url": URL, "when": 3}, "when: must be a string", True),
    ({"url": URL, "when": "x" * 1001}, "when: is longer than 1000 characters", True),
    ({"url": URL, "when": "a[?"}, "when: bad JMESPath: incomplete expression", False),
    ({"url": URL, "when": "nope(@)"}, "when: bad JMESPath: unknown function", False),
    ({"url": URL, "lease_seconds": 0}, "lease_seconds: must be at least 1", True),
    ({"url": URL, "lease_seconds": -5}, "lease_seconds: must be at least 1", True),
    ({"url": URL, "lease_seconds": "60"}, "lease_seconds: must be a whole number", True),
    ({"url": URL, "lease_seconds": 1.5}, "lease_seconds: must be a whole number", True),
    ({"url": URL, "lease_seconds": True}, "lease_seconds: must be a whole number", True),
]  # fmt: skip


@pytest.mark.parametrize(("doc", "words", "schema_refuses"), BAD)
def test_bad_bodies_get_a_400_naming_the_field(doc: Any, words: str, schema_refuses: bool) -> None:
    body = doc.encode() if isinstance(doc, str) else json.dumps(doc).encode()
    with pytest.raises(errors.BadRequest) as caught:
        parse_create(body, SOURCES, jmespath_problem)
    message = str(caught.value)
    assert message.startswith(words), message
    assert "SECRETVALUE" not in message and "\n" not in message
    assert caught.value.status == 400
    parsed = json.loads(body)
    assert (
        Draft202012Validator(SCHEMAS["CreateSubscription"]).is_valid(parsed) is not schema_refuses
    )


def test_every_field_of_the_schema_has_a_refused_case() -> None:
    fields = {w.split(":")[0].split("[")[0] for _, w, _ in BAD if ":" in w.split(" ")[0]}
    assert fields == set(CREATE_SCHEMA["properties"])


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{", "the body is not JSON"),
        (b"\xff", "the body is not JSON"),
        (b'{"url": "%s"}' % URL.encode() + b" trailing", "the body is not JSON"),
    ],
)
def test_a_body_that_is_not_json_is_a_400(body: bytes, words: str) -> None:
    with pytest.raises(errors.BadRequest, match=words):
        parse_create(body, SOURCES, jmespath_problem)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"lease_seconds": 0}', "lease_seconds: must be at least 1"),
        (b'{"lease": 5}', "unknown field 'lease'"),
        (b"[]", "the body must be a JSON object"),
    ],
)
def test_a_bad_renewal_body_is_a_400(body: bytes, words: str) -> None:
    with pytest.raises(errors.BadRequest, match=words):
        parse_renew(body)
