"""The OpenAPI schema's shared parts: the producer key's security scheme, the error bodies, and the
answers every operation can give (added by `add_standard_responses`, a drf-spectacular hook).

What a hook adds is what the middleware and DRF answer for every view alike: 401 + WWW-Authenticate
and 403 where the operation needs credentials, 400 / 415 where it reads a body, 404 where its path
has a parameter (an id that is not yours, or not a number), 503 + Retry-After while the database is
away (`notifications.middleware`). An operation's own documentation of a status wins.
"""

from __future__ import annotations

import copy
from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema

from notifications.ingest.authentication import KEYWORD

ERROR = "ApiError"
VALIDATION_ERRORS = "ValidationErrors"

#: Components the standard responses refer to (added by the hook).
COMPONENTS: dict[str, Any] = {
    "schemas": {
        ERROR: {
            "type": "object",
            "properties": {
                "detail": {"type": "string", "description": "What went wrong, for a human."},
                "code": {"type": "string", "nullable": True, "description": "A stable machine-readable code."},
            },
            "required": ["detail"],
            "example": {"detail": "Invalid API key.", "code": "authentication_failed"},
        },
        VALIDATION_ERRORS: {
            "type": "object",
            "description": 'Field-keyed reasons, e.g. `{"recipients": ["This list may not be empty."]}`; '
            "`non_field_errors` for the body as a whole; nested objects and lists for nested fields.",
            "additionalProperties": {"anyOf": [{"type": "array"}, {"type": "object"}]},
            "example": {"recipients": ["This list may not be empty."], "recipient": ["Unknown field."]},
        },
    }
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _header(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "schema": schema or {"type": "string"}}


#: A 400's body: field-keyed reasons, or an error with a code (a body that is not JSON: `parse_error`).
BAD_REQUEST = {"anyOf": [_ref(VALIDATION_ERRORS), _ref(ERROR)]}

RETRY_AFTER = _header("Seconds to wait before retrying.", {"type": "integer", "minimum": 0})

#: status → (the response, when it applies: "secured", "body", "path-parameter" or "always").
STANDARD_RESPONSES: dict[str, tuple[dict[str, Any], str]] = {
    "400": (
        {
            "description": "Malformed or invalid input: the body names each bad field with its reason.",
            "content": _json(BAD_REQUEST),
        },
        "body",
    ),
    "401": (
        {
            "description": "No credentials, or not valid ones. `WWW-Authenticate` names the scheme to use.",
            "content": _json(_ref(ERROR)),
        },
        "secured",
    ),
    "403": (
        {"description": "Authenticated, but not allowed (or a revoked key).", "content": _json(_ref(ERROR))},
        "secured",
    ),
    "404": ({"description": "No such resource (or not yours).", "content": _json(_ref(ERROR))}, "path-parameter"),
    "415": ({"description": "The body's Content-Type is not accepted.", "content": _json(_ref(ERROR))}, "body"),
    "503": (
        {
            "description": "Temporarily unavailable (the database is away, or the service sheds load); "
            "nothing was changed. Retry after `Retry-After` seconds.",
            "content": _json(_ref(ERROR)),
        },
        "always",
    ),
}


def _applies(when: str, operation: dict[str, Any], path: str) -> bool:
    if when == "always":
        return True
    if when == "secured":
        return bool(operation.get("security", [{}])) and operation.get("security") != [{}]
    if when == "body":
        return "requestBody" in operation or any(p.get("in") == "query" for p in operation.get("parameters", []))
    return "{" in path


def add_standard_responses(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: document the answers every operation can give."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    for name, component in COMPONENTS["schemas"].items():
        schemas.setdefault(name, component)
    for path, item in result.get("paths", {}).items():
        for method, operation in item.items():
            if method not in {"get", "put", "patch", "post", "delete"}:
                continue
            responses = operation.setdefault("responses", {})
            for status, (response, when) in STANDARD_RESPONSES.items():
                if status not in responses and _applies(when, operation, path):
                    responses[status] = copy.deepcopy(response)
            for status, response in responses.items():
                _complete(status, response)
    return result


#: Headers an answer of this status always carries.
STATUS_HEADERS = {
    "401": {"WWW-Authenticate": _header("The authentication scheme expected.")},
    "429": {"Retry-After": RETRY_AFTER},
    "503": {"Retry-After": RETRY_AFTER},
}


def _complete(status: str, response: dict[str, Any]) -> None:
    """An error documented by its description only gets the error body and its status's headers."""
    if status.startswith(("4", "5")) and "content" not in response:
        response["content"] = _json(copy.deepcopy(BAD_REQUEST) if status == "400" else _ref(ERROR))
    for name, header in STATUS_HEADERS.get(status, {}).items():
        response.setdefault("headers", {}).setdefault(name, header)


class RequiredBodySchema(AutoSchema):
    """A view's schema whose request body is required (drf-spectacular leaves a polymorphic one optional)."""

    def _get_request_body(self, direction="request"):
        body = super()._get_request_body(direction)
        if body is not None:
            body["required"] = True
        return body


class ApiKeyScheme(OpenApiAuthenticationExtension):
    """The producer key (`Authorization: Api-Key <key>`) as the schema's `ApiKeyAuth` scheme."""

    target_class = "notifications.ingest.authentication.ApiKeyAuthentication"
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": f"A producer API key: `Authorization: {KEYWORD} <key>` (or the `X-Api-Key` header).",
        }
