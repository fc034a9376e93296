"""``ThreadLease``: the Redis lock a turn holds on its thread, safe against Redis stalls.

A plain lock held for the whole turn's timeout had one failure mode that mattered: a lock
request that timed out on our side while Redis was stalled was still applied when Redis
resumed, leaving the thread locked by nobody for the full hold (~130 s), and every later
turn on it waited out its timeout. Here:
- the lock is a short lease (``lease_s``), renewed every third of it while the turn runs,
  so a lock nobody holds any more is gone within one lease;
- it is taken with a token of ours, and released only by compare-and-delete of that
  token (redis-py's ``Lock`` does both); when taking it fails, the token is deleted the
  same way, best effort, in case Redis applied the request after all;
- waiting for it is bounded (``wait_s``; 0: do not wait): then ``ThreadBusy`` (409).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from types import TracebackType

from redis.asyncio.lock import Lock
from redis.exceptions import LockError, RedisError

from app.errors import ThreadBusy
from app.persistence.plain import RedisClient

logger = logging.getLogger(__name__)

#: how long the best-effort delete of an abandoned token may take
ABANDON_TIMEOUT_S = 1.0


class ThreadLease:
    def __init__(self, client: RedisClient, name: str, *, lease_s: float, wait_s: float,
                 retry_after_s: int = 2) -> None:
        self.name = name
        self.lease_s = lease_s
        self.wait_s = wait_s
        self.retry_after_s = retry_after_s
        self.token = uuid.uuid4().hex.encode()
        self.lock = Lock(client, name, timeout=lease_s, sleep=0.05, blocking=wait_s > 0,
                         blocking_timeout=wait_s if wait_s > 0 else None,
                         thread_local=False, raise_on_release_error=False)
        self._renewer: asyncio.Task[None] | None = None
        #: set when a renewal found the lease gone (another holder may have it now)
        self.lost = False

    async def __aenter__(self) -> ThreadLease:
        try:
            acquired = await self.lock.acquire(token=self.token)
        except (RedisError, OSError, TimeoutError):
            await self._abandon()
            raise
        if not acquired:
            raise ThreadBusy(
                "another turn is running on this thread" + (
                    f" and did not end within {self.wait_s:g}s" if self.wait_s > 0 else ""),
                headers={"Retry-After": str(self.retry_after_s)})
        self._renewer = asyncio.create_task(self._renew(), name=f"lease {self.name}")
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        try:
            await self.lock.do_release(self.token)
        except LockError:
            pass  # the lease ran out and may be another turn's now: not ours to delete
        except (RedisError, OSError, TimeoutError) as error:
            logger.warning("could not release %s (%r); it lapses within %gs", self.name,
                           error, self.lease_s)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.lock.do_reacquire()
            except LockError:
                self.lost = True
                logger.warning("lease %s was lost while its turn ran", self.name)
                return
            except (RedisError, OSError, TimeoutError) as error:
                logger.warning("could not renew %s (%r); trying again", self.name, error)

    async def _abandon(self) -> None:
        """Delete our token if Redis applied the request we gave up on (best effort)."""
        try:
            async with asyncio.timeout(ABANDON_TIMEOUT_S):
                await self.lock.do_release(self.token)
        except (LockError, RedisError, OSError, TimeoutError):
            pass
