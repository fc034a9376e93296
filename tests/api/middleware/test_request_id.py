"""Every response carries X-Request-ID: the caller's when it is a sane id, else a new one."""

import re

from tests.conftest import SettingsFactory, app_client

FRESH = re.compile(r"^[0-9a-f]{32}$")


async def test_every_response_carries_a_request_id(make_settings: SettingsFactory) -> None:
    async with app_client(make_settings(max_body_bytes=40000)) as client:
        first = (await client.get("/health")).headers["x-request-id"]
        second = (await client.get("/health")).headers["x-request-id"]
        assert FRESH.match(first) and FRESH.match(second) and first != second
        echoed = await client.get("/health", headers={"X-Request-ID": "abc-123.x:y"})
        assert echoed.headers["x-request-id"] == "abc-123.x:y"
        for bad in ("bad id\twith space", "x" * 129, "semi;colon"):
            refused = await client.get("/health", headers={"X-Request-ID": bad})
            assert FRESH.match(refused.headers["x-request-id"]), bad  # replaced, not echoed
        error = await client.get("/v1/tenants/nobody/threads/t/messages",
                                 headers={"X-Request-ID": "trace-404"})
        assert error.status_code == 404 and error.headers["x-request-id"] == "trace-404"
        # Refused by the body limit, outside the app: the id is there too.
        too_big = await client.post("/v1/tenants/demo/threads/t/messages",
                                    content=b"x" * 50000, headers={"X-Request-ID": "trace-413"})
        assert too_big.status_code == 413 and too_big.headers["x-request-id"] == "trace-413"
