"""The OpenAPI 3.1 document of the subscriptions API, served at `/v1/openapi.json`.

It is also the validator's source: `validate.parse_create` checks request
bodies against `CREATE_SCHEMA` below, so the document cannot drift from what
the server accepts.
"""

from __future__ import annotations

from typing import Any

from .lease import DEFAULT_LEASE, MAX_LEASE, Status
from .ssrf import MAX_URL_LENGTH
from .verify import MAX_ECHO, VERIFY_TIMEOUT
from .webhook_secrets import OVERLAP

NAME_PATTERN = "^[A-Za-z0-9_-]+$"  # a source name, as the config allows it
EVENTS = (
    "item.created",
    "item.updated",
    "item.deleted",
    "document.changed",
    "source.failing",
    "source.recovered",
)
# `template` needs a template from the config and `apprise` URLs are not http(s):
# neither can be checked or verified from an API request, so neither is offered.
FORMATS = (
    "standard-webhooks",
    "slack",
    "discord",
    "teams",
    "mattermost",
    "google-chat",
    "ntfy",
)
MAX_WHEN = 1000  # characters of a `when` expression
MAX_LIST = 1000  # entries of `sources`, and subscriptions in one page of the list

_LEASE = {
    "type": "integer",
    "minimum": 1,
    "description": f"Seconds the subscription lasts once verified; default {DEFAULT_LEASE}"
    f" (10 days). More than {MAX_LEASE} (30 days) is granted as {MAX_LEASE}.",
}

CREATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["url"],
    "properties": {
        "url": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_URL_LENGTH,
            "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://",
            "description": "Where webhooks go: http or https, no user name or password,"
            " resolving only to addresses that allow_networks allows. Query"
            " parameters named hub.* are reserved for verification.",
        },
        "sources": {
            "type": "array",
            "items": {"type": "string", "pattern": NAME_PATTERN, "maxLength": 100},
            "minItems": 1,
            "maxItems": MAX_LIST,
            "uniqueItems": True,
            "description": "Names of configured sources; default: every source.",
        },
        "events": {
            "type": "array",
            "items": {"enum": list(EVENTS)},
            "minItems": 1,
            "uniqueItems": True,
            "description": "Event types wanted; default: every change event (not source"
            " health events, which must be listed).",
        },
        "format": {
            "enum": list(FORMATS),
            "default": "standard-webhooks",
            "description": "The body each webhook has.",
        },
        "when": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_WHEN,
            "description": "A JMESPath expression over the event {type, id, timestamp, data};"
            " the event is delivered only when it is truthy.",
        },
        "lease_seconds": _LEASE,
    },
}

RENEW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"lease_seconds": _LEASE},
}

_TIME = {"type": "string", "format": "date-time"}
_STRINGS_OR_NULL = {"type": ["array", "null"], "items": {"type": "string"}}

_SCHEMAS: dict[str, Any] = {
    "CreateSubscription": CREATE_SCHEMA,
    "RenewSubscription": RENEW_SCHEMA,
    "Subscription": {
        "type": "object",
        "required": [
            "id",
            "url",
            "status",
            "sources",
            "events",
            "format",
            "when",
            "lease_seconds",
            "lease_ends_at",
            "created_at",
            "owner",
            "error",
        ],
        "properties": {
            "id": {"type": "string"},
            "url": {"type": "string"},
            "status": {
                "enum": [s.value for s in Status],
                "description": "pending until verified; active while the lease runs; failed"
                " when the first verification failed; expired when the lease ran out; gone"
                " when the callback answered 410 Gone.",
            },
            "sources": _STRINGS_OR_NULL,
            "events": _STRINGS_OR_NULL,
            "format": {"enum": list(FORMATS)},
            "when": {"type": ["string", "null"]},
            "lease_seconds": {"type": "integer", "description": "The lease granted."},
            "lease_ends_at": {**_TIME, "type": ["string", "null"]},
            "created_at": _TIME,
            "owner": {"type": "string", "description": "Name of the token that created it."},
            "error": {
                "type": ["string", "null"],
                "description": "Why the last verification failed, if it did.",
            },
        },
    },
    "Created": {
        "type": "object",
        "required": ["id", "status", "secret", "lease_seconds"],
        "properties": {
            "id": {"type": "string"},
            "status": {"const": "pending"},
            "secret": {
                "type": "string",
                "pattern": "^whsec_",
                "description": "The signing secret, shown this once.",
            },
            "lease_seconds": {"type": "integer", "description": "The lease granted."},
        },
    },
    "Renewing": {
        "type": "object",
        "required": ["id", "status", "lease_seconds"],
        "properties": {
            "id": {"type": "string"},
            "status": {"enum": [s.value for s in Status]},
            "lease_seconds": {"type": "integer"},
        },
    },
    "SecretRotated": {
        "type": "object",
        "required": ["id", "secret", "previous_secret_retires_at"],
        "properties": {
            "id": {"type": "string"},
            "secret": {"type": "string", "pattern": "^whsec_"},
            "previous_secret_retires_at": _TIME,
        },
    },
    "SubscriptionList": {
        "type": "object",
        "required": ["subscriptions", "next"],
        "properties": {
            "subscriptions": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/Subscription"},
            },
            "next": {
                "type": ["string", "null"],
                "description": "Pass as `after` for the next page; null on the last one.",
            },
        },
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if headers:
        response["headers"] = headers
    return response


_RESPONSES: dict[str, Any] = {
    "400": _error("The body or a parameter is invalid; `error` says which and why."),
    "401": _error(
        "No token, or an unknown one.",
        {"WWW-Authenticate": {"schema": {"type": "string"}}},
    ),
    "403": _error("The token's scope does not allow this."),
    "404": _error("No such subscription among those this token may see."),
    "409": _error(
        "A subscription of this token to this URL and sources exists already, or"
        " a verification of this subscription is under way."
    ),
    "429": _error(
        "Too many changes with this token; retry after Retry-After seconds.",
        {"Retry-After": {"schema": {"type": "integer"}}},
    ),
}


def _refs(*codes: str) -> dict[str, Any]:
    return {code: {"$ref": f"#/components/responses/{code}"} for code in codes}


def _json(schema: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}


_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}

_VERIFICATION = (
    "pollhook then sends `GET url?hub.mode=subscribe&hub.topic=SOURCES&hub.challenge=RANDOM"
    "&hub.lease_seconds=N` (after the URL's own query; SOURCES is the comma-separated"
    " sources, or `*`). Only a 2xx answer whose body is exactly the challenge, within"
    f" {VERIFY_TIMEOUT:g} s and {MAX_ECHO} bytes, with no redirect, makes it `active`;"
    " nothing is delivered before."
)

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "pollhook subscriptions API",
        "version": "1",
        "description": "Register a URL to receive pollhook's webhooks. Every request but"
        " this document needs `Authorization: Bearer TOKEN`; errors are JSON `{error}`.",
    },
    "security": [{"bearer": []}],
    "paths": {
        "/v1/subscriptions": {
            "post": {
                "operationId": "createSubscription",
                "summary": "Register a URL; it is verified before anything is delivered.",
                "description": _VERIFICATION,
                "requestBody": {"required": True, "content": _json("CreateSubscription")},
                "responses": {
                    "202": {
                        "description": "Created, pending verification.",
                        "content": _json("Created"),
                    },
                    **_refs("400", "401", "403", "409", "429"),
                },
            },
            "get": {
                "operationId": "listSubscriptions",
                "summary": "The subscriptions this token may see, oldest first.",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_LIST,
                            "default": 100,
                        },
                    },
                    {"name": "after", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {"description": "One page.", "content": _json("SubscriptionList")},
                    **_refs("400", "401", "403"),
                },
            },
        },
        "/v1/subscriptions/{id}": {
            "parameters": [_ID],
            "get": {
                "operationId": "getSubscription",
                "responses": {
                    "200": {"description": "The subscription.", "content": _json("Subscription")},
                    **_refs("401", "403", "404"),
                },
            },
            "delete": {
                "operationId": "deleteSubscription",
                "summary": "Stop deliveries at once and forget the subscription.",
                "responses": {
                    "204": {"description": "Deleted."},
                    **_refs("401", "403", "404", "429"),
                },
            },
        },
        "/v1/subscriptions/{id}/rotate-secret": {
            "parameters": [_ID],
            "post": {
                "operationId": "rotateSecret",
                "summary": "A new signing secret, shown once; the previous one keeps signing"
                f" alongside for {OVERLAP // 3600} hours.",
                "responses": {
                    "200": {"description": "Rotated.", "content": _json("SecretRotated")},
                    **_refs("401", "403", "404", "429"),
                },
            },
        },
        "/v1/subscriptions/{id}/renew": {
            "parameters": [_ID],
            "post": {
                "operationId": "renewSubscription",
                "summary": "Verify again and, if that passes, restart the lease.",
                "description": "The running lease is unchanged until the new verification"
                " passes. " + _VERIFICATION,
                "requestBody": {"required": False, "content": _json("RenewSubscription")},
                "responses": {
                    "202": {"description": "Verification under way.", "content": _json("Renewing")},
                    **_refs("400", "401", "403", "404", "409", "429"),
                },
            },
        },
        "/v1/openapi.json": {
            "get": {
                "operationId": "openapi",
                "security": [],
                "responses": {
                    "200": {
                        "description": "This document.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            },
        },
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": _SCHEMAS,
        "responses": _RESPONSES,
    },
}
