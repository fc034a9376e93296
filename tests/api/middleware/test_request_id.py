from tests.conftest import SettingsFactory, app_client


async def test_every_response_carries_a_request_id(make_settings: SettingsFactory) -> None:
    async with app_client(make_settings()) as client:
        generated = await client.get("/health")
        assert len(generated.headers["x-request-id"]) == 32
        echoed = await client.get("/health", headers={"X-Request-ID": "abc-123.x:y"})
        assert echoed.headers["x-request-id"] == "abc-123.x:y"
        refused = await client.get("/health", headers={"X-Request-ID": "bad id\twith space"})
        assert refused.headers["x-request-id"] != "bad id\twith space"
        error = await client.get("/v1/tenants/nobody/threads/t/messages")
        assert error.status_code == 404 and "x-request-id" in error.headers
