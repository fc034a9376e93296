"""The admin API, in-process, with and without Redis."""

from __future__ import annotations

import hashlib

import pytest

from tests.conftest import MockLLM, SettingsFactory, app_client

ADMIN = {"Authorization": "Bearer admin-secret"}
NEW = {"system_prompt": "You are New Co.", "temperature": 0.5, "tools": ["calculator"]}


async def test_admin_is_off_without_a_token(make_settings: SettingsFactory) -> None:
    async with app_client(make_settings()) as client:
        response = await client.get("/v1/admin/tenants", headers=ADMIN)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "admin_disabled"


async def test_admin_needs_the_right_token(make_settings: SettingsFactory) -> None:
    async with app_client(make_settings(admin_token="admin-secret")) as client:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "admin-secret"}):
            response = await client.get("/v1/admin/tenants", headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_create_read_replace_delete(
    make_settings: SettingsFactory, mock_llm: MockLLM, backend: str, request: pytest.FixtureRequest
) -> None:
    extra = {"redis_url": request.getfixturevalue("redis_url")} if backend == "redis" else {}
    settings = make_settings(admin_token="admin-secret", openai_api_key="sk-test",
                             openai_base_url=mock_llm.base_url, **extra)
    async with app_client(settings) as client:
        listed = (await client.get("/v1/admin/tenants", headers=ADMIN)).json()
        assert listed["tenants"] == ["acme", "demo", "globex", "shorty"]
        created = await client.put("/v1/admin/tenants/newco", json=NEW, headers=ADMIN)
        assert created.status_code == 201, created.text
        assert created.json()["config"]["system_prompt"] == "You are New Co."
        chat = "/v1/tenants/newco/threads/t1/messages"
        assert (await client.post(chat, json={"message": "hi"})).status_code == 200
        first_prompt_chars = mock_llm.requests()[-1]["chars"][0]

        replaced = await client.put("/v1/admin/tenants/newco",
                                    json={**NEW, "system_prompt": "You are Newer Co., v2."},
                                    headers=ADMIN)
        assert replaced.status_code == 200
        got = (await client.get("/v1/admin/tenants/newco", headers=ADMIN)).json()
        assert got["config"]["system_prompt"] == "You are Newer Co., v2."
        # the cached agent was replaced: the next turn uses the new prompt
        assert (await client.post(chat, json={"message": "again"})).status_code == 200
        assert mock_llm.requests()[-1]["chars"][0] == len("You are Newer Co., v2.")
        assert first_prompt_chars == len("You are New Co.")

        assert (await client.delete("/v1/admin/tenants/newco", headers=ADMIN)).status_code == 204
        gone = await client.post(chat, json={"message": "hi"})
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "tenant_not_found"
        missing = await client.delete("/v1/admin/tenants/newco", headers=ADMIN)
        assert missing.status_code == 404
        stats = (await client.get("/cache-stats")).json()["agent_cache"]
        assert stats["evictions"].get("invalidated", 0) >= 2


@pytest.mark.parametrize(("body", "fragment"), [
    ({**NEW, "tools": ["rm_rf"]}, "unknown tools"),
    ({**NEW, "surprise": 1}, "surprise"),
    ({**NEW, "temperature": 7}, "temperature"),
    ({**NEW, "api_keys_sha256": [hashlib.sha256(b"acme-secret-key").hexdigest()]},
     "share an API key"),
])
async def test_bad_configs_are_422_and_change_nothing(
    make_settings: SettingsFactory, body: dict[str, object], fragment: str
) -> None:
    async with app_client(make_settings(keys=True, admin_token="admin-secret")) as client:
        response = await client.put("/v1/admin/tenants/newco", json=body, headers=ADMIN)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_request"
        assert fragment in response.json()["error"]["message"]
        assert (await client.get("/v1/admin/tenants/newco", headers=ADMIN)).status_code == 404


async def test_tenant_keys_set_through_admin_take_effect(make_settings: SettingsFactory) -> None:
    async with app_client(make_settings(admin_token="admin-secret")) as client:
        chat = "/v1/tenants/newco/threads/t1/messages"
        assert (await client.post("/v1/tenants/demo/threads/t/messages",
                                  json={"message": "x"})).status_code == 200  # auth off
        keyed = {**NEW, "api_keys_sha256": [hashlib.sha256(b"newco-key").hexdigest()]}
        assert (await client.put("/v1/admin/tenants/newco", json=keyed,
                                 headers=ADMIN)).status_code == 201
        assert (await client.post(chat, json={"message": "x"})).status_code == 401
        ok = await client.post(chat, json={"message": "x"},
                               headers={"Authorization": "Bearer newco-key"})
        assert ok.status_code == 200
