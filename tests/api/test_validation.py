"""Cards, webhook URLs and the OpenAPI document, checked without a daemon."""

from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator

from mnemomd.agents.store import default_alignment_card
from mnemomd.api.handlers import check_webhook_url, validate_card
from mnemomd.api.openapi import build_openapi
from mnemomd.api.routes import ROUTES, ApiError

NOW_MS = 1_767_225_600_000


def test_the_default_card_is_accepted_as_is():
    card = default_alignment_card("smolt-1", NOW_MS)
    assert validate_card("smolt-1", card, NOW_MS) == card


def test_card_ids_are_filled_in_and_the_agent_is_fixed():
    card = default_alignment_card("smolt-1", NOW_MS)
    for key in ("card_id", "issued_at", "agent_id"):
        card.pop(key)
    valid = validate_card("smolt-1", card, NOW_MS)
    assert valid["agent_id"] == "smolt-1" and valid["card_id"].startswith("ac-")
    assert valid["issued_at"].startswith("2026-01-01")


@pytest.mark.parametrize("change, message", [
    ({"agent_id": "smolt-2"}, "card.agent_id must be smolt-1"),
    ({"values": "honesty"}, "invalid alignment card: values"),
    ({"autonomy": None}, "invalid alignment card: autonomy"),
    ({"principal": {"type": "nobody"}}, "invalid alignment card: principal"),
])
def test_cards_the_aap_model_rejects_are_400(change, message):
    card = {**default_alignment_card("smolt-1", NOW_MS), **change}
    with pytest.raises(ApiError) as caught:
        validate_card("smolt-1", card, NOW_MS)
    assert caught.value.status == 400 and caught.value.message.startswith(message)


def test_webhook_urls_are_checked_before_anything_is_stored():
    check_webhook_url("https://hooks.example.com/h", False)
    check_webhook_url("http://receiver.internal/h", True)
    for url, allow_http in (("http://receiver.internal/h", False), ("ftp://x/h", True),
                            ("https://user:pw@x/h", False)):
        with pytest.raises(ApiError) as caught:
            check_webhook_url(url, allow_http)
        assert caught.value.status == 400 and caught.value.message.startswith("url ")


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def test_openapi_lists_exactly_the_route_table():
    document = build_openapi()
    listed = {(method.upper(), path) for path, ops in document["paths"].items()
              for method in ops}
    assert listed == {(r.method, r.path) for r in ROUTES}
    json.dumps(document)  # serialisable as served


def test_openapi_references_resolve_and_schemas_are_valid():
    document = build_openapi()
    schemas = document["components"]["schemas"]
    for ref in _refs(document):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas
    for route in ROUTES:
        operation = document["paths"][route.path][route.method.lower()]
        assert sorted(operation["responses"]) == sorted(str(s) for s in route.statuses)
        success = operation["responses"][str(route.status)]["content"]["application/json"]
        Draft202012Validator.check_schema(success["schema"])
        assert operation["x-required-role"] == route.role
        assert ("requestBody" in operation) == route.takes_body
