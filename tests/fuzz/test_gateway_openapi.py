"""Schemathesis against the session stack's real gateway: its OpenAPI document says what the
server does.

The document is read from the running gateway (`/openapi.json`) and every operation is called
with generated requests, valid and invalid ones, as the demo app; valid chat requests go to the
demo connection's fake provider. Checked: no 5xx, every 4xx error in OpenAI's error shape,
statuses, content types, headers and bodies as documented, what the document calls valid is
accepted and what it calls invalid refused, and undeclared methods get a 405 whose `Allow`
lists the documented ones.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    missing_required_header,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from byorouter_cli.dev.demo import DemoFacts
from byorouter_cli.dev.stack import Stack
from byorouter_gateway.main import create_app
from byorouter_gateway.settings import GatewaySettings

CONNECTION_HEADER = "X-Byorouter-Connection"
EXAMPLES_PER_OPERATION = 30
METHODS = ("get", "put", "post", "delete", "patch")


@schemathesis.check
def openai_error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 4xx answer's body is `{"error": {"message", "type", "code", "param"}}`."""
    if not 400 <= response.status_code < 500:
        return None
    body = response.json()
    assert isinstance(body, dict), "error body is not a JSON object"
    error = body.get("error")
    assert isinstance(error, dict), "error body has no error object"
    for name in ("message", "type", "code", "param"):
        assert name in error, f"error object has no {name}"
    assert isinstance(error["message"], str), "error message is not a string"
    assert error["message"], "error message is empty"
    return True


CHECKS = [
    not_a_server_error,
    openai_error_shape,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    positive_data_acceptance,
    negative_data_rejection,
    missing_required_header,
]


@pytest.fixture(scope="session")
def document(stack: Stack) -> dict[str, Any]:
    return httpx.get(stack.gateway_url + "/openapi.json", timeout=10).json()  # type: ignore[no-any-return]


def _has_integer_past_64_bits(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return not -(2**63) <= value < 2**64
    if isinstance(value, dict):
        return any(_has_integer_past_64_bits(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_integer_past_64_bits(v) for v in value)
    return False


def _valid_as_demo(case: Any, demo: DemoFacts) -> None:
    """A valid request made the demo app's: its connection, its model (still valid data)."""
    if case.headers and any(name.lower() == CONNECTION_HEADER.lower() for name in case.headers):
        case.headers[CONNECTION_HEADER] = demo["connection_id"]
    if isinstance(case.body, dict) and "messages" in case.body:
        case.body["model"] = demo["model"]


def _operations() -> list[tuple[str, str]]:
    """(method, path) of every documented operation, from the app itself (no server needed), so
    each gets its own test id; the tests read the document from the running gateway."""
    app = create_app(GatewaySettings(), lambda: None)  # type: ignore[arg-type, return-value]
    return [
        (method.upper(), path)
        for path, item in app.openapi()["paths"].items()
        for method in item
        if method in METHODS
    ]


# Operations whose document still calls a request valid that the server refuses (see the
# reasons); each is reported as xfail until its document is fixed.
NOT_YET_CONFORMING: dict[tuple[str, str], str] = {}
# Well-formed requests these refuse with a 400 for what no document can say: a code that was
# never issued is `invalid_grant` (RFC 6749), a return URL or redirect URI must be one the app
# registered.
STATE_DEPENDENT: frozenset[tuple[str, str]] = frozenset(
    {("POST", "/v1/oauth/token"), ("POST", "/v1/connect/sessions"), ("POST", "/v1/oauth/par")}
)


def _cases() -> list[Any]:
    cases = []
    for method, path in _operations():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            # Valid requests refused; a negative case can happen to be valid too, so either
            # half may fail, and either may pass by luck (not strict).
            reason = NOT_YET_CONFORMING.get((method, path))
            marks = [pytest.mark.xfail(reason=reason, strict=False)] if reason else []
            cases.append(
                pytest.param(method, path, mode, marks=marks, id=f"{method} {path} {mode}")
            )
    return cases


@pytest.fixture(scope="session")
def api_schema(stack: Stack) -> Any:
    return schemathesis.openapi.from_url(stack.gateway_url + "/openapi.json")


@pytest.mark.parametrize(("method", "path", "mode"), _cases())
def test_operation_answers_as_its_openapi_document_says(
    api_schema: Any, demo: DemoFacts, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]
    auth = {"Authorization": f"Bearer {demo['app_api_key']}"}
    excluded = [positive_data_acceptance] if (method, path) in STATE_DEPENDENT else []

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        # A valid document value the server refuses with a 400 (checked on its own below).
        assume(not _has_integer_past_64_bits(case.body))
        if mode is GenerationMode.POSITIVE:
            _valid_as_demo(case, demo)
        # On the case itself: a negative case that drops a required header would drop an
        # `Authorization` given beside it too, and refused keys would spend the per-IP budget
        # every other test on this stack needs (auth is not what this test is about).
        case.headers = {**(case.headers or {}), **auth}
        response = case.call(timeout=10)
        skipped = list(excluded)
        if response.status_code == 413:
            # A body over the route's limit is refused before it is read: a rejection, though
            # not one of the statuses Schemathesis expects for invalid data.
            skipped.append(negative_data_rejection)
        if response.status_code == 429:
            # A per-app or per-IP limit (key tests: 30 a minute) says nothing about the document.
            skipped.append(positive_data_acceptance)
        case.validate_response(response, checks=CHECKS, excluded_checks=skipped)

    try:
        check()
    except Unsatisfiable:
        # Nothing to make invalid: the operation takes no parameters and no body.
        assert mode is GenerationMode.NEGATIVE


def test_an_undeclared_method_is_a_405_whose_allow_lists_the_documented_methods(
    stack: Stack, demo: DemoFacts, document: dict[str, Any]
) -> None:
    auth = {"Authorization": f"Bearer {demo['app_api_key']}"}
    wrong: list[str] = []
    for template, item in document["paths"].items():
        path = template.replace("{connection_id}", demo["connection_id"]).replace(
            "{tunnel_id}", "tun_" + "a" * 16
        )
        declared = {m.upper() for m in item if m in METHODS}
        for method in [m.upper() for m in METHODS if m not in item] + ["OPTIONS"]:
            response = httpx.request(method, stack.gateway_url + path, headers=auth, timeout=10)
            allowed = {m.strip() for m in response.headers.get("allow", "").split(",") if m.strip()}
            if response.status_code != 405 or allowed - {"HEAD"} != declared:
                wrong.append(
                    f"{method} {template}: {response.status_code}, Allow {sorted(allowed)}"
                )
            else:
                assert response.json()["error"]["code"] == "method_not_allowed"
    assert not wrong, wrong


def test_an_integer_past_64_bits_in_a_chat_body_is_not_a_server_error(
    stack: Stack, demo: DemoFacts
) -> None:
    response = httpx.post(
        stack.gateway_url + "/v1/chat/completions",
        headers={
            "Authorization": f"Bearer {demo['app_api_key']}",
            CONNECTION_HEADER: demo["connection_id"],
        },
        content=b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "seed": %d}'
        % (demo["model"].encode(), 2**70),
        timeout=10,
    )
    # The router keeps integers exactly; one a provider cannot take is the app's mistake.
    assert response.status_code == 400, response.text
    assert "64 bits" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/connections/conn_abcdefgh%0A",  # `$` alone let a trailing newline through
        "/api/tunnel/status/tun_%C3%A9%C3%A9%C3%A9%C3%A9",  # non-ASCII letters
    ],
    ids=["connection id with a newline", "tunnel id with non-ASCII letters"],
)
def test_an_id_the_document_calls_malformed_is_refused_as_malformed(
    stack: Stack, demo: DemoFacts, path: str
) -> None:
    response = httpx.get(
        stack.gateway_url + path,
        headers={"Authorization": f"Bearer {demo['app_api_key']}"},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] in ("invalid_connection_id", "invalid_tunnel_id")
