"""The admin API, in-process, with and without Redis."""

from __future__ import annotations

import hashlib
import logging

import pytest

from tests.conftest import (
    BACKENDS,
    SERVICE_KEY,
    TENANT_KEY,
    MockLLM,
    SettingsFactory,
    app_client,
    storage_for,
)

ADMIN = {"Authorization": "Bearer admin-secret"}
SERVICE = {"Authorization": f"Bearer {SERVICE_KEY}"}
NEW = {"system_prompt": "You are New Co.", "temperature": 0.5, "tools": ["calculator"]}
NEWCO_KEY = hashlib.sha256(b"newco-key").hexdigest()


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


@pytest.mark.parametrize("backend", BACKENDS)
async def test_create_read_replace_delete(
    make_settings: SettingsFactory, mock_llm: MockLLM, backend: str, request: pytest.FixtureRequest
) -> None:
    extra = storage_for(backend, request)
    settings = make_settings(admin_token="admin-secret", openai_api_key="sk-test",
                             service_api_keys=[SERVICE_KEY],
                             openai_base_url=mock_llm.base_url, **extra)
    async with app_client(settings) as client:
        listed = (await client.get("/v1/admin/tenants", headers=ADMIN)).json()
        assert listed["tenants"] == ["acme", "demo", "globex", "shorty"]
        created = await client.put("/v1/admin/tenants/newco", json=NEW, headers=ADMIN)
        assert created.status_code == 201, created.text
        assert created.json()["config"]["system_prompt"] == "You are New Co."
        chat = "/v1/tenants/newco/threads/t1/messages"
        assert (await client.post(chat, json={"message": "hi"},
                                  headers=SERVICE)).status_code == 200
        first_prompt_chars = mock_llm.requests()[-1]["chars"][0]

        replaced = await client.put("/v1/admin/tenants/newco",
                                    json={**NEW, "system_prompt": "You are Newer Co., v2."},
                                    headers=ADMIN)
        assert replaced.status_code == 200
        got = (await client.get("/v1/admin/tenants/newco", headers=ADMIN)).json()
        assert got["config"]["system_prompt"] == "You are Newer Co., v2."
        # the cached agent was replaced: the next turn uses the new prompt
        assert (await client.post(chat, json={"message": "again"},
                                  headers=SERVICE)).status_code == 200
        assert mock_llm.requests()[-1]["chars"][0] == len("You are Newer Co., v2.")
        assert first_prompt_chars == len("You are New Co.")

        assert (await client.delete("/v1/admin/tenants/newco", headers=ADMIN)).status_code == 204
        gone = await client.post(chat, json={"message": "hi"}, headers=SERVICE)
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "tenant_not_found"
        missing = await client.delete("/v1/admin/tenants/newco", headers=ADMIN)
        assert missing.status_code == 404
        stats = (await client.get("/cache-stats", headers=SERVICE)).json()["agent_cache"]
        assert stats["evictions"].get("invalidated", 0) >= 2


@pytest.mark.parametrize(("body", "fragment"), [
    ({**NEW, "tools": ["rm_rf"], "api_keys_sha256": [NEWCO_KEY]}, "unknown tools"),
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
    """An admin token alone turns auth on, from the start: keyless tenants are unreachable
    until a tenant gets a key."""
    async with app_client(make_settings(admin_token="admin-secret")) as client:
        chat = "/v1/tenants/newco/threads/t1/messages"
        assert (await client.post("/v1/tenants/demo/threads/t/messages",
                                  json={"message": "x"})).status_code == 401
        keyed = {**NEW, "api_keys_sha256": [NEWCO_KEY]}
        assert (await client.put("/v1/admin/tenants/newco", json=keyed,
                                 headers=ADMIN)).status_code == 201
        assert (await client.post(chat, json={"message": "x"})).status_code == 401
        ok = await client.post(chat, json={"message": "x"},
                               headers={"Authorization": "Bearer newco-key"})
        assert ok.status_code == 200


async def test_no_admin_change_switches_auth_off(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Tenant keys only (no service keys): a keyless tenant is refused with 409, and
    deleting every keyed tenant leaves auth on (it once switched itself off, silently)."""
    async with app_client(make_settings(keys=True, admin_token="admin-secret")) as client:
        keyless = await client.put("/v1/admin/tenants/open", json=NEW, headers=ADMIN)
        assert keyless.status_code == 409
        assert keyless.json()["error"]["code"] == "tenant_unreachable"
        assert (await client.get("/v1/admin/tenants/open", headers=ADMIN)).status_code == 404
        for tenant in ("acme", "globex"):
            assert (await client.delete(f"/v1/admin/tenants/{tenant}",
                                        headers=ADMIN)).status_code == 204
        ready = (await client.get("/health/ready")).json()
        assert ready["auth"] == "on"
        with caplog.at_level(logging.INFO, logger="app.audit"):
            anonymous = await client.post("/v1/tenants/demo/threads/t/messages",
                                          json={"message": "x"})
        assert anonymous.status_code == 401
        assert "401 POST /v1/tenants/demo/threads/t/messages" in caplog.text
        assert "no Authorization header" in caplog.text


@pytest.mark.parametrize(("header", "status"), [
    (f"Bearer {TENANT_KEY}", 200),
    (f"bearer {TENANT_KEY}", 200),
    (f"BEARER {TENANT_KEY}", 200),
    (f"Bearer   {TENANT_KEY}", 200),  # 1*SP
    (f"Bearer {TENANT_KEY} ", 200),
    (f"Bearer{TENANT_KEY}", 401),
    (f"Basic {TENANT_KEY}", 401),
    ("Bearer", 401),
    ("Bearer ", 401),
    (f"Bearer {TENANT_KEY} extra", 401),
    (f"Bearer\t{TENANT_KEY}", 401),
    (TENANT_KEY, 401),
])
async def test_bearer_credentials_are_read_as_the_rfc_says(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture, header: str, status: int
) -> None:
    async with app_client(make_settings(keys=True)) as client:
        with caplog.at_level(logging.INFO, logger="app.audit"):
            response = await client.post("/v1/tenants/acme/threads/t/messages",
                                         json={"message": "x"},
                                         headers={"Authorization": header})
    assert response.status_code == status, response.text
    if status == 401:
        assert "Authorization is not 'Bearer <token>'" in caplog.text
        assert TENANT_KEY not in caplog.text  # never the key
