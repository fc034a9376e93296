"""Erasure: a deleted thread leaves no key behind; a tenant deleted with purge=true takes
all its threads with it (SCAN and UNLINK in batches, on Redis), and no other tenant's;
a tenant key rotates with both keys valid during the change."""

from __future__ import annotations

import hashlib
import re

import pytest
import redis

from app.persistence.base import thread_key
from tests.conftest import (
    BACKENDS,
    SERVICE_KEY,
    MockLLM,
    SettingsFactory,
    app_client,
    storage_for,
)

ADMIN = {"Authorization": "Bearer admin-secret"}
SERVICE = {"Authorization": f"Bearer {SERVICE_KEY}"}


def keys_of(redis_url: str, tenant: str) -> list[bytes]:
    with redis.Redis.from_url(redis_url) as client:
        return list(client.scan_iter(match=f"*{thread_key(tenant, '')}*", count=1000))


@pytest.mark.parametrize("backend", BACKENDS)
async def test_threads_and_tenants_are_erased_completely(
    make_settings: SettingsFactory, mock_llm: MockLLM, backend: str,
    request: pytest.FixtureRequest,
) -> None:
    extra = storage_for(backend, request)
    redis_url: str | None = extra.get("redis_url")
    settings = make_settings(admin_token="admin-secret", service_api_keys=[SERVICE_KEY],
                             openai_api_key="sk-test", openai_base_url=mock_llm.base_url,
                             **extra)
    async with app_client(settings) as client:
        for tenant, threads in (("acme", 3), ("globex", 1)):
            for i in range(threads):
                for text in ("hi", '[[tool:calculator {"expression": "1+1"}]]'):
                    response = await client.post(
                        f"/v1/tenants/{tenant}/threads/t{i}/messages",
                        json={"message": text}, headers=SERVICE)
                    assert response.status_code == 200, response.text
        if redis_url:
            assert keys_of(redis_url, "acme") and keys_of(redis_url, "globex")
        # one thread
        assert (await client.delete("/v1/tenants/acme/threads/t0",
                                    headers=SERVICE)).status_code == 204
        assert (await client.get("/v1/tenants/acme/threads/t0/messages",
                                 headers=SERVICE)).status_code == 404
        if redis_url:
            # langgraph's keys go on with ":", the plain one's hash tag ends with "}"
            assert not [k for k in keys_of(redis_url, "acme") if re.search(rb"/t0[:}]", k)]
        # the whole tenant
        purged = await client.delete("/v1/admin/tenants/acme", params={"purge": "true"},
                                     headers=ADMIN)
        assert purged.status_code == 200
        assert purged.json() == {"tenant_id": "acme", "threads_deleted": 2}
        if redis_url:
            assert keys_of(redis_url, "acme") == []
        else:
            stats = (await client.get("/cache-stats", headers=SERVICE)).json()
            assert stats["persistence"]["threads"] == 1
        kept = await client.get("/v1/tenants/globex/threads/t0/messages", headers=SERVICE)
        assert kept.status_code == 200 and len(kept.json()["messages"]) >= 4


async def test_a_tenant_key_rotates_with_both_keys_valid_meanwhile(
    make_settings: SettingsFactory,
) -> None:
    old, new = "old-acme-key", "new-acme-key"

    def digest(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    async def status(key: str) -> int:
        response = await client.post("/v1/tenants/acme/threads/r/messages",
                                     json={"message": "x"},
                                     headers={"Authorization": f"Bearer {key}"})
        return response.status_code

    async with app_client(make_settings(keys=True, admin_token="admin-secret")) as client:
        config = {"system_prompt": "You are Acme.", "api_keys_sha256": [digest(old)]}
        assert (await client.put("/v1/admin/tenants/acme", json=config,
                                 headers=ADMIN)).status_code == 200
        assert await status(old) == 200
        both = {**config, "api_keys_sha256": [digest(old), digest(new)]}
        assert (await client.put("/v1/admin/tenants/acme", json=both,
                                 headers=ADMIN)).status_code == 200
        assert await status(old) == 200 and await status(new) == 200
        rotated = {**config, "api_keys_sha256": [digest(new)]}
        assert (await client.put("/v1/admin/tenants/acme", json=rotated,
                                 headers=ADMIN)).status_code == 200
        assert await status(old) == 401 and await status(new) == 200
