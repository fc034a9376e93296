"""Readiness tells the truth about the upstream: what a status from it means."""

from __future__ import annotations

import pytest

from tests.conftest import MockLLM, SettingsFactory, app_client


@pytest.mark.parametrize(("status", "ready"), [
    (200, True),
    (404, True),   # a gateway without /models still serves chat completions
    (401, False),  # a wrong key: every turn would fail
    (403, False),
    (500, False),
    (503, False),
])
async def test_readiness_follows_what_the_upstream_answers(
    make_settings: SettingsFactory, mock_llm: MockLLM, status: int, ready: bool
) -> None:
    mock_llm.control(models_status=status)
    settings = make_settings(openai_api_key="sk-test", openai_base_url=mock_llm.base_url)
    async with app_client(settings) as client:
        answer = await client.get("/health/ready")
    body = answer.json()
    if ready:
        assert answer.status_code == 200 and body["status"] == "ready", body
    else:
        assert answer.status_code == 503, body
        assert body["checks"]["upstream"] == f"upstream answered {status}"
