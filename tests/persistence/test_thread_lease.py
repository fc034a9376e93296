"""The Redis thread lease against a real Redis of its own, paused with SIGSTOP where the
test needs a stall: renewed while held, released only by its token, bounded waits, and a
lock request lost in a stall that lapses within one lease instead of the turn's timeout."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.errors import ThreadBusy
from app.persistence.locks import ThreadLease
from tests.servers.processes import ManagedProcess, start_redis

NAME = "agenthost:turn-lock:{acme:t1}"


@pytest.fixture(scope="module")
def own_redis() -> Iterator[ManagedProcess]:
    proc = start_redis()
    yield proc
    proc.signal(signal.SIGCONT)
    proc.stop()


@pytest.fixture
async def client(own_redis: ManagedProcess) -> AsyncIterator[Redis]:
    redis = Redis(port=own_redis.port, socket_timeout=0.5, socket_connect_timeout=0.5)
    await redis.delete(NAME)
    yield redis
    await redis.aclose()


async def test_a_lease_is_renewed_while_held_and_released_by_its_token(client: Redis) -> None:
    async with ThreadLease(client, NAME, lease_s=0.6, wait_s=1) as lease:
        await asyncio.sleep(1.5)  # 2.5 leases: only renewal keeps it
        assert await client.get(NAME) == lease.token
        assert 0 < await client.pttl(NAME) <= 600
    assert await client.exists(NAME) == 0
    # a lease that lapsed and was taken by another holder is not deleted on exit
    async with ThreadLease(client, NAME, lease_s=0.6, wait_s=1) as lease:
        await client.set(NAME, b"someone-else", px=5000)
        await asyncio.sleep(0.5)  # a renewal finds it gone
        assert lease.lost
    assert await client.get(NAME) == b"someone-else"


async def test_a_busy_thread_is_refused_at_once_or_after_the_wait(client: Redis) -> None:
    async with ThreadLease(client, NAME, lease_s=5, wait_s=1):
        with pytest.raises(ThreadBusy) as at_once:
            async with ThreadLease(client, NAME, lease_s=5, wait_s=0):
                pass
        assert at_once.value.status_code == 409 and at_once.value.code == "thread_busy"
        assert at_once.value.headers == {"Retry-After": "2"}
        with pytest.raises(ThreadBusy, match=r"did not end within 0\.3s"):
            async with ThreadLease(client, NAME, lease_s=5, wait_s=0.3):
                pass
    async with ThreadLease(client, NAME, lease_s=5, wait_s=0):
        pass  # free again


async def test_a_lock_request_lost_in_a_redis_stall_lapses_within_one_lease(
    client: Redis, own_redis: ManagedProcess
) -> None:
    own_redis.signal(signal.SIGSTOP)
    try:
        with pytest.raises((RedisError, OSError, TimeoutError)):
            async with ThreadLease(client, NAME, lease_s=2, wait_s=1):
                pass
    finally:
        own_redis.signal(signal.SIGCONT)
    # Redis ran the request it had received once it resumed: a lock nobody holds, which
    # used to last the whole turn timeout (+10 s). Now it is one lease at most.
    ttl = await client.pttl(NAME)
    print(f"orphan's TTL after the stall: {ttl} ms")
    assert ttl <= 2000
    async with ThreadLease(client, NAME, lease_s=2, wait_s=5) as lease:
        assert await client.get(NAME) == lease.token
