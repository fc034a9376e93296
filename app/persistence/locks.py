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
- waiting for it is bounded (``wait_s``; 0: do not wait): then ``ThreadBusy`` (409);
- with the plain checkpointer, taking it also reads the thread's checkpoint, in the same
  round trip (the turn's first read then needs none of its own), and releasing it also
  writes the turn's save (held till then: plain.py ``LeaseHeld``): a turn is two round
  trips.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import uuid
from types import TracebackType
from typing import Any

from redis.asyncio.lock import Lock
from redis.exceptions import LockError, RedisError

from app.errors import ThreadBusy
from app.persistence.plain import HELD, LeaseHeld, PlainRedisSaver, RedisClient

logger = logging.getLogger(__name__)

#: how long the best-effort delete of an abandoned token may take
ABANDON_TIMEOUT_S = 1.0


class _PrefetchingLock(Lock):
    """redis-py's lock, which reads the thread's checkpoint in the round trip that takes
    it (the plain checkpointer): a turn's first read costs no round trip of its own."""

    def __init__(self, client: RedisClient, name: str, saver: PlainRedisSaver,
                 thread_id: str, **options: Any) -> None:
        super().__init__(client, name, **options)
        self.saver = saver
        self.thread_id = thread_id

    async def do_acquire(self, token: str | bytes) -> bool:
        assert self.timeout and isinstance(token, bytes)  # ThreadLease sets both
        read = await self.saver.take_and_read(self.name, token, int(self.timeout * 1000),
                                              self.thread_id)
        if read is None:
            return False
        HELD.set(LeaseHeld(self.thread_id, read))
        return True


class ThreadLease:
    def __init__(self, client: RedisClient, name: str, *, lease_s: float, wait_s: float,
                 retry_after_s: int = 2, prefetch: PlainRedisSaver | None = None,
                 thread_id: str = "") -> None:
        self.name = name
        self.lease_s = lease_s
        self.wait_s = wait_s
        self.retry_after_s = retry_after_s
        self.token = uuid.uuid4().hex.encode()
        options: dict[str, Any] = {
            "timeout": lease_s, "sleep": 0.05, "blocking": wait_s > 0,
            "blocking_timeout": wait_s if wait_s > 0 else None, "thread_local": False,
            "raise_on_release_error": False}
        self.lock = (Lock(client, name, **options) if prefetch is None
                     else _PrefetchingLock(client, name, prefetch, thread_id, **options))
        # Most turns end well within a third of the lease: the renewing task is only
        # started when that much has passed (a timer costs less than a task per turn).
        self._timer: asyncio.TimerHandle | None = None
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
        self._timer = asyncio.get_running_loop().call_later(self.lease_s / 3,
                                                            self._start_renewing)
        return self

    def _start_renewing(self) -> None:
        self._timer = None
        self._renewer = asyncio.get_running_loop().create_task(
            self._renew(), name=f"lease {self.name}", context=contextvars.Context())

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        held = HELD.get()
        HELD.set(None)  # whatever the turn did not use is never kept
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        if held is not None and held.save is not None:
            await self._save_and_release(held.save, exc)
            return
        try:
            await self.lock.do_release(self.token)
        except LockError:
            pass  # the lease ran out and may be another turn's now: not ours to delete
        except (RedisError, OSError, TimeoutError) as error:
            logger.warning("could not release %s (%r); it lapses within %gs", self.name,
                           error, self.lease_s)

    async def _save_and_release(self, save: bytes, failure: BaseException | None) -> None:
        """The turn's save and the release, in one round trip, one script (the lease and
        the thread share a hash tag: one slot on a cluster). When it fails
        nothing of the turn is stored: the thread is as it was before it (a turn that had
        succeeded fails with the storage error; one that had failed keeps its own error)
        -- unless the connection broke after Redis had run it, which no client can tell."""
        assert isinstance(self.lock, _PrefetchingLock)
        try:
            await self.lock.saver.save_and_release(self.lock.thread_id, save, self.name,
                                                   self.token)
        except (RedisError, OSError, TimeoutError) as error:
            if failure is None:
                raise
            logger.warning("could not store the undoing of %s (%r); nothing of the turn "
                           "was stored", self.name, error)

    async def _renew(self) -> None:
        while True:
            try:
                await self.lock.do_reacquire()
            except LockError:
                self.lost = True
                logger.warning("lease %s was lost while its turn ran", self.name)
                return
            except (RedisError, OSError, TimeoutError) as error:
                logger.warning("could not renew %s (%r); trying again", self.name, error)
            await asyncio.sleep(self.lease_s / 3)

    async def _abandon(self) -> None:
        """Delete our token if Redis applied the request we gave up on (best effort)."""
        try:
            async with asyncio.timeout(ABANDON_TIMEOUT_S):
                await self.lock.do_release(self.token)
        except (LockError, RedisError, OSError, TimeoutError):
            pass
