"""``GET /v1/openapi.json``: the OpenAPI 3.1 document, built from the route table.

Nothing here is written by hand per endpoint: paths, parameters, bodies, responses and
roles all come from ``routes.ROUTES``, the same table the server dispatches on.
"""

from __future__ import annotations

from typing import Any

from aap.schemas.alignment_card import AlignmentCard

from mnemomd import __version__
from mnemomd.api import schemas as s
from mnemomd.api.routes import PUBLIC, ROUTES, Route

REF_TEMPLATE = "#/components/schemas/{model}"
ERROR_DESCRIPTIONS = {
    400: "Invalid input", 401: "Missing, expired or invalid token",
    403: "Not allowed for this caller (a viewer writing, or a non-loopback client with no "
         "credential configured)",
    404: "Unknown agent or object", 405: "Method not allowed", 409: "Conflicting state",
    413: "Request body too large",
}


def _body_schema(route: Route, components: dict[str, Any]) -> dict[str, Any] | None:
    if route.body is not None:
        schema = route.body.model_json_schema(ref_template=REF_TEMPLATE)
        components.update(schema.pop("$defs", {}))
        components[route.body.__name__] = schema
        return {"$ref": REF_TEMPLATE.format(model=route.body.__name__)}
    return route.body_schema


def _operation(route: Route, components: dict[str, Any]) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in route.path_params]
    parameters += [{"name": p.name, "in": "query", "required": False,
                    "description": p.description, "schema": p.schema()} for p in route.query]
    responses: dict[str, Any] = {
        str(route.status): {"description": "Success",
                            "content": {"application/json": {"schema": route.response}}}}
    for status in route.statuses[1:]:
        responses[str(status)] = {
            "description": ERROR_DESCRIPTIONS.get(status, "Error"),
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    operation: dict[str, Any] = {
        "operationId": route.operation_id, "summary": route.summary, "tags": [route.tag],
        "parameters": parameters, "responses": responses,
        "x-required-role": route.role,
    }
    if route.role == PUBLIC:
        operation["security"] = []  # no token needed (docs/attestation.md)
    body = _body_schema(route, components)
    if body is not None:
        operation["requestBody"] = {
            "required": route.body is not s.ContainmentBody,
            "content": {"application/json": {"schema": body}}}
        if route.accepts_yaml:
            operation["requestBody"]["content"]["application/yaml"] = {"schema": body}
    return operation


def build_openapi() -> dict[str, Any]:
    card = AlignmentCard.model_json_schema(ref_template=REF_TEMPLATE)
    components: dict[str, Any] = {**card.pop("$defs", {}), "AlignmentCard": card,
                                  "Error": s.ERROR}
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": "mnemomd management API", "version": __version__,
                 "description": "Agents, enforcement, integrity checkpoints, traces and "
                                "webhooks of a mnemomd gateway. Viewers may call GET "
                                "operations; admins change enforcement, settings, cards, "
                                "conscience values and webhooks, and pause and resume; "
                                "owners also kill, reactivate and manage tool policies "
                                "(x-required-role of each operation). The public "
                                "attestation operations (tag attestation) need no token."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "bearerFormat": "JWT or API key"}}},
    }
