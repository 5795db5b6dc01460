"""The route table and the parsing of paths, queries and bodies (no reactor)."""

from __future__ import annotations

import json

import pytest

from mnemomd.api import schemas as s
from mnemomd.api.handlers import ApiHandlers
from mnemomd.api.routes import (
    MAX_BODY_BYTES,
    PUBLIC,
    ROUTES,
    ApiError,
    match,
    match_public,
    parse_body,
    parse_query,
)


def route_for(method: str, path: str):
    return match(method, path)[0]


def error_of(func, *args) -> ApiError:
    with pytest.raises(ApiError) as caught:
        func(*args)
    return caught.value


def test_every_route_has_a_handler_and_a_unique_operation():
    assert len({r.operation_id for r in ROUTES}) == len(ROUTES)
    assert len({(r.method, r.path) for r in ROUTES}) == len(ROUTES)
    for route in ROUTES:
        assert callable(getattr(ApiHandlers, route.handler, None)), route.handler
        assert route.role in ("owner", "admin", "viewer", PUBLIC)
        assert route.role in ("viewer", PUBLIC) or route.method != "GET"


def test_reads_need_viewer_and_writes_admin_except_what_only_owners_do():
    assert {r.role for r in ROUTES if r.method == "GET"} == {"viewer", PUBLIC}
    owners = {r.handler for r in ROUTES if r.role == "owner"}
    assert owners == {"containment_kill", "containment_reactivate", "put_org_policy",
                      "evaluate_policy", "put_agent_policy", "delete_agent_policy"}
    assert {r.role for r in ROUTES if r.method != "GET" and r.handler not in owners} \
        == {"admin", PUBLIC}


def test_only_the_attestation_operations_are_public_and_none_writes():
    """And the console's sign-in settings, read before anyone has signed in."""
    public = {(r.method, r.path) for r in ROUTES if r.role == PUBLIC}
    assert public == {
        ("GET", "/v1/keys"), ("GET", "/v1/checkpoints/{checkpoint_id}/certificate"),
        ("GET", "/v1/checkpoints/{checkpoint_id}/inclusion-proof"),
        ("GET", "/v1/agents/{agent_id}/merkle-root"), ("POST", "/v1/verify"),
        ("GET", "/v1/console/config")}
    assert all(r.tag == "attestation" for r in ROUTES
               if r.role == PUBLIC and r.path != "/v1/console/config")
    assert all(401 not in r.statuses for r in ROUTES if r.role == PUBLIC)


def test_match_public_finds_only_public_routes():
    route, params = match_public("GET", "/v1/checkpoints/ic-1/certificate")
    assert route.handler == "get_certificate" and params == {"checkpoint_id": "ic-1"}
    assert match_public("GET", "/v1/checkpoints/ic-1") is None
    assert match_public("GET", "/v1/checkpoints/a%2Fb/certificate") is None
    assert match_public("DELETE", "/v1/keys") is None


def test_match_finds_route_and_decodes_path_parameters():
    route, params = match("GET", "/v1/agents/smolt-abc%2Ddef/checkpoints")
    assert route.handler == "list_checkpoints" and params == {"agent_id": "smolt-abc-def"}
    route, params = match("POST", "/v1/webhooks/wh-1/deliveries/whd-2/redeliver")
    assert route.handler == "redeliver"
    assert params == {"webhook_id": "wh-1", "delivery_id": "whd-2"}


def test_unknown_path_is_404_and_wrong_method_405_with_allow():
    assert error_of(match, "GET", "/v1/nothing").status == 404
    assert error_of(match, "GET", "/v1/agents/a/b/c").status == 404
    wrong = error_of(match, "DELETE", "/v1/agents/smolt-1/card")
    assert wrong.status == 405 and dict(wrong.headers)[b"allow"] == b"GET, PUT"


def test_encoded_slash_in_a_parameter_is_not_found():
    assert error_of(match, "GET", "/v1/agents/a%2Fb").status == 404


def test_pagination_defaults_and_bounds():
    route = route_for("GET", "/v1/agents")
    assert parse_query(route, b"") == {"limit": 50, "offset": 0, "containment_status": None,
                                       "enforcement_mode": None, "include": None}
    assert parse_query(route, b"?limit=500&offset=7")["limit"] == 500
    assert parse_query(route, b"?include=integrity")["include"] == "integrity"
    for bad in (b"limit=0", b"limit=501", b"limit=x", b"offset=-1", b"limit=1.5",
                b"limit=", b"limit=1&limit=2", b"page=2", b"containment_status=gone",
                b"include=everything", b"include="):
        assert error_of(parse_query, route, bad).status == 400, bad


def test_filters_are_checked():
    route = route_for("GET", "/v1/agents/smolt-1/checkpoints")
    query = parse_query(route, b"verdict=boundary_violation&session_id=s-1")
    assert (query["verdict"], query["session_id"]) == ("boundary_violation", "s-1")
    assert error_of(parse_query, route, b"verdict=fine").status == 400
    assert error_of(parse_query, route, b"session_id=" + b"x" * 129).status == 400


@pytest.mark.parametrize("raw, message", [
    (b"", "must be a JSON object"), (b"[1]", "must be a JSON object"),
    (b"{nope", "not valid JSON"), (b"\xff\xfe", "not UTF-8"),
    (b'{"mode": "maybe"}', "mode: Input should be 'observe', 'nudge' or 'enforce'"),
    (b'{"mode": "nudge", "extra": 1}', "extra: Extra inputs are not permitted"),
    (b'{"mode": 1}', "mode:"),
])
def test_enforcement_body_problems_are_400(raw, message):
    error = error_of(parse_body, route_for("PUT", "/v1/agents/smolt-1/enforcement"), raw)
    assert error.status == 400 and message in error.message


def test_bodies_are_typed_strictly():
    route = route_for("PUT", "/v1/agents/smolt-1/settings")
    assert parse_body(route, b'{"nudge_rate": 1}').nudge_rate == 1.0
    for bad in (b'{"nudge_rate": 1.5}', b'{"nudge_threshold": "3"}', b'{"aip_enabled": 1}',
                b'{"nudge_strategy": "sometimes"}'):
        assert error_of(parse_body, route, bad).status == 400, bad


def test_containment_body_is_optional_and_bodiless_routes_refuse_one():
    pause = route_for("POST", "/v1/agents/smolt-1/containment/pause")
    assert parse_body(pause, b"") == s.ContainmentBody()
    assert parse_body(pause, b'{"reason": "r"}').reason == "r"
    rotate = route_for("POST", "/v1/webhooks/wh-1/rotate-secret")
    assert parse_body(rotate, b"") is None
    assert error_of(parse_body, rotate, b'{"x": 1}').status == 400


@pytest.mark.parametrize("raw, message", [
    # Deeper than the JSON parser's recursion allows: a 400, not a RecursionError (500).
    (b'{"a":' * 100_000, "nested too deeply"),
    # PostgreSQL cannot store NUL in text: refused here rather than failing in the write.
    (b'{"mode": "nudge", "x\\u0000": 1}', "NUL"),
    (b'{"reason": "a\\u0000b"}', "NUL"),
])
def test_hostile_json_bodies_are_400(raw, message):
    route = route_for("POST", "/v1/agents/smolt-1/containment/pause")
    error = error_of(parse_body, route, raw)
    assert error.status == 400 and message in error.message


def test_query_values_with_nul_or_non_ascii_digits_are_400():
    checkpoints = route_for("GET", "/v1/agents/smolt-1/checkpoints")
    assert error_of(parse_query, checkpoints, b"session_id=s%00").status == 400
    agents = route_for("GET", "/v1/agents")
    assert error_of(parse_query, agents, "limit=\uff11".encode()).status == 400
    assert error_of(parse_query, agents, b"limit=%D9%A3").status == 400


def test_oversized_body_is_413():
    route = route_for("PUT", "/v1/agents/smolt-1/card")
    raw = json.dumps({"pad": "x" * MAX_BODY_BYTES}).encode()
    assert error_of(parse_body, route, raw).status == 413


def test_card_body_is_left_to_the_aap_model():
    route = route_for("PUT", "/v1/agents/smolt-1/card")
    assert parse_body(route, b'{"anything": true}') == {"anything": True}


def test_statuses_cover_the_errors_each_operation_can_give():
    assert route_for("GET", "/v1/agents").statuses == (200, 400, 401, 403)
    pause = route_for("POST", "/v1/agents/smolt-1/containment/pause")
    assert pause.statuses == (200, 400, 401, 403, 404, 413, 409)
