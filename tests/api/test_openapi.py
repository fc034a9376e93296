"""``/openapi.json`` builds, is a valid OpenAPI document, and tells the truth: the API is
fuzzed against it (schemathesis, bounded examples, every route, with and without
credentials) over a real socket: no 5xx, every response as the schema says, every error in
the error shape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from openapi_spec_validator import validate
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.conftest import SERVICE_KEY
from tests.servers.processes import ManagedProcess, start_app

ADMIN_TOKEN = "fuzz-admin-token"
OPENAI_PATHS = {"/v1/chat/completions", "/v1/models"}
CREDENTIALS = {"none": {}, "service": {"Authorization": f"Bearer {SERVICE_KEY}"},
               "admin": {"Authorization": f"Bearer {ADMIN_TOKEN}"}}


@pytest.fixture(scope="module")
def service() -> Iterator[ManagedProcess]:
    proc = start_app({"AGENTHOST_SERVICE_API_KEYS": SERVICE_KEY,
                      "AGENTHOST_ADMIN_TOKEN": ADMIN_TOKEN,
                      "AGENTHOST_MEMORY_TRACEMALLOC": "false"})
    yield proc
    proc.stop()


def openapi(proc: ManagedProcess) -> dict[str, Any]:
    response = httpx.get(f"http://127.0.0.1:{proc.port}/openapi.json", timeout=30)
    assert response.status_code == 200, response.text
    spec: dict[str, Any] = response.json()
    return spec


def test_the_schema_builds_is_valid_and_says_what_the_api_answers(
    service: ManagedProcess,
) -> None:
    spec = openapi(service)
    validate(spec)  # openapi-spec-validator: a valid OpenAPI 3.1 document
    paths = spec["paths"]
    stream = paths["/v1/tenants/{tenant_id}/threads/{thread_id}/stream"]["post"]["responses"]
    assert "text/event-stream" in stream["200"]["content"]
    for status in ("401", "404", "408", "413", "422", "429", "503"):
        assert stream[status]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/ErrorOut"), status
    assert "Retry-After" in stream["503"]["headers"] and "Retry-After" in stream["429"]["headers"]
    turn = paths["/v1/tenants/{tenant_id}/threads/{thread_id}/messages"]["post"]["responses"]
    assert {"502", "504"} <= turn.keys()
    assert "409" in paths["/v1/admin/tenants/{tenant_id}"]["put"]["responses"]
    metrics = paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert next(iter(metrics)).startswith("text/plain")
    assert httpx.get(f"http://127.0.0.1:{service.port}/docs", timeout=10).status_code == 200


def test_fuzzed_requests_get_no_5xx_and_answers_the_schema_allows(
    service: ManagedProcess,
) -> None:
    """Every operation, a bounded number of generated cases each, sent three times: with
    no credentials, a service key and the admin token."""
    api = schemathesis.openapi.from_url(f"http://127.0.0.1:{service.port}/openapi.json")
    seen: dict[str, int] = {}
    for result in api.get_all_operations():
        operation = result.ok()

        @settings(max_examples=12, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            for who, headers in CREDENTIALS.items():
                response = case.call(headers=headers, timeout=30)
                seen[str(response.status_code)] = seen.get(str(response.status_code), 0) + 1
                assert response.status_code < 500, (case.path, who, response.text)
                # The schema says what is answered; it does not carry every validator (key
                # digests, tool names are checked by the service), so a schema-valid body
                # may still be 422: that one check is left out.
                case.validate_response(response, excluded_checks=[positive_data_acceptance])
                content_type = response.headers.get("content-type") or [""]
                if isinstance(content_type, list):
                    content_type = content_type[0]
                if response.status_code >= 400 and content_type.startswith("application/json"):
                    error = response.json()["error"]
                    shape = ({"message", "type", "param", "code"}  # OpenAI's, on its routes
                             if case.path in OPENAI_PATHS else {"code", "message"})
                    assert set(error) == shape, (who, error)

        check()
    print("fuzzed responses by status:", dict(sorted(seen.items())))
    assert sum(seen.values()) >= 100 and "200" in seen and "401" in seen
