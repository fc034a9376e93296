"""``RedisBackend``: conversation history in Redis 8 through ``AsyncRedisSaver``, with a TTL.

The saver rewrites a thread's whole state as a new checkpoint document each time it
saves, and keeps every old one. Turns run with ``durability="exit"`` (one checkpoint per
turn) and ``after_turn`` prunes all but the latest, so with the stored-history cap a
thread's Redis footprint and per-turn cost stay flat however long it runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import orjson
from langgraph.checkpoint.redis.aio import AsyncRedisSaver
from langgraph.checkpoint.redis.jsonplus_redis import JsonPlusRedisSerializer
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import AbstractConnection, Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redisvl.exceptions import RedisVLError

from app.clean_context import in_fresh_context
from app.errors import ConfigError, StorageUnavailable
from app.observability.metrics import Metrics
from app.persistence.base import Backend, thread_key
from app.persistence.locks import ThreadLease
from app.persistence.plain import THREAD_PREFIX, PlainRedisSaver, RedisClient
from app.tenants.registry import TenantRegistry
from app.tenants.store import RedisTenantStore, TenantStore
from config.settings import Settings

logger = logging.getLogger(__name__)

REQUIRED_MODULES = {"ReJSON": "RedisJSON", "search": "RediSearch"}
RECOVER_INTERVAL_S = 2.0
MAX_CACHED_CLASSES = 256
LOCK_PREFIX = "agenthost:turn-lock:"
PURGE_BATCH = 500


def glob_escape(text: str) -> str:
    """``text`` matched literally in a SCAN MATCH pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def connection_options(settings: Settings) -> dict[str, Any]:
    """How the service's Redis connections are opened, on one server or a cluster.

    A pooled connection that died with a restarted Redis fails its next command with a
    ConnectionError: that command is sent once more on a fresh connection. Timeouts are
    not retried (a stall would only last twice as long), nor is anything else. A
    connection idle for 5 s is pinged first.
    """
    return {"max_connections": settings.redis_max_connections,
            "socket_timeout": settings.redis_timeout_s,
            "socket_connect_timeout": settings.redis_timeout_s,
            "retry": Retry(NoBackoff(), 1), "retry_on_error": [RedisConnectionError],
            "health_check_interval": 5}


def lock_key(key: str) -> str:
    """The key of a thread's lease; one hash tag with the thread's hash (on Redis Cluster,
    one node serves both)."""
    return f"{LOCK_PREFIX}{{{key}}}"


async def _is_cluster(url: str, timeout_s: float) -> bool:
    """Whether the server at ``url`` runs in cluster mode (INFO cluster), asked once at
    start; unreachable: a single server is assumed (set AGENTHOST_REDIS_CLUSTER to be
    sure)."""
    client: Redis = Redis.from_url(url, socket_timeout=timeout_s,
                                   socket_connect_timeout=timeout_s)
    try:
        info = await client.info("cluster")
    except (RedisError, OSError) as exc:
        logger.warning("could not ask Redis at %s whether it is a cluster (%r); assuming "
                       "a single server", redact_url(url), exc)
        return False
    finally:
        await client.aclose()
    return bool(info.get("cluster_enabled"))


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def _use_plain(settings: Settings, client: Redis, where: str) -> tuple[bool, bool]:
    """Which checkpointer (True: the plain one), and whether the modules were found here
    already (then the set-up does not ask again): the setting, or with ``auto`` whether
    the modules are there.

    ``plain`` never calls MODULE LIST. ``auto`` asks once, at start: without the modules,
    or where MODULE LIST is refused (managed services), the plain one; when Redis cannot
    be reached then, langgraph-checkpoint-redis is assumed (readiness says if the modules
    turn out to be missing).
    """
    choice = settings.redis_checkpointer
    if choice != "auto":
        return choice == "plain", False
    try:
        await _require_modules(client, where)
    except ConfigError as exc:
        logger.warning("%s; using the plain checkpointer (AGENTHOST_REDIS_CHECKPOINTER=auto)",
                       exc)
        return True, False
    except (RedisConnectionError, RedisTimeoutError, OSError):
        return False, False
    except RedisError as exc:  # MODULE LIST refused
        logger.warning("Redis at %s refused MODULE LIST (%s); using the plain checkpointer",
                       where, exc)
        return True, False
    return False, True


async def _require_modules(client: Redis, where: str) -> None:
    names = set()
    for module in await client.module_list():
        name = module.get(b"name", module.get("name"))
        names.add(name.decode() if isinstance(name, bytes) else str(name))
    missing = [label for name, label in REQUIRED_MODULES.items() if name not in names]
    if missing:
        raise ConfigError(
            f"Redis at {where} lacks {', '.join(missing)}; use Redis 8 (the redis:8 image) "
            "or a server started with those modules"
        )


class _OrjsonDecoder:
    def decode(self, data: str | bytes) -> Any:
        return orjson.loads(data)


class _OrjsonEncoder:
    def encode(self, obj: Any) -> str:
        return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS).decode()


class _OrjsonPipeline(Pipeline):
    # PRIVATE: built with Pipeline's constructor arguments (tests/test_library_privates.py).
    def json(self, encoder: Any = None, decoder: Any = None) -> Any:
        return super().json(encoder=encoder or _OrjsonEncoder(),
                            decoder=decoder or _OrjsonDecoder())


class OrjsonRedis(Redis):
    """A Redis client whose JSON commands (pipelined too) parse with orjson.

    The saver reads every checkpoint with JSON.GET; redis-py parses the reply with the
    standard library, ~3 ms for a 100-message thread, several times orjson's cost.
    """

    def json(self, encoder: Any = None, decoder: Any = None) -> Any:
        return super().json(encoder=encoder or _OrjsonEncoder(),
                            decoder=decoder or _OrjsonDecoder())

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        return _OrjsonPipeline(self.connection_pool, self.response_callbacks, transaction,
                               shard_hint)


class CachedClassSerializer(JsonPlusRedisSerializer):
    """The saver's serializer, with constructor-class lookups memoized.

    Stored messages name their class by LangChain's legacy path (``langchain.schema...``).
    Without the ``langchain`` package that import fails, and Python does not cache a
    failed import: every message of every read searched the file system again (~8 ms to
    read a 20-message thread). Results are cached per path, a failure as its message only;
    the set of paths is the handful of message classes.

    A failure is raised as a new exception each time. Caching the exception instance and
    re-raising it leaked every conversation read: each raise appended the raising frames to
    the one instance's ``__traceback__``, keeping alive every checkpoint they referenced
    (~80 KB per thread, without end; tests/test_memory_growth.py guards it).
    """

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[tuple[str, ...], type[Any] | str] = {}

    # PRIVATE: overrides the serializer's _constructor_class (tests/test_library_privates.py).
    def _constructor_class(self, obj: dict[str, Any]) -> type[Any]:
        parts = obj.get("id")
        if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
            return super()._constructor_class(obj)
        key = tuple(parts)
        found = self._classes.get(key)
        if found is None:
            try:
                found = super()._constructor_class(obj)
            except ValueError as exc:
                found = str(exc)
            if len(self._classes) < MAX_CACHED_CLASSES:
                self._classes[key] = found
        if isinstance(found, str):
            raise ValueError(found)
        return found


def fresh_context_connections(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """The pool's connection class, opening connections outside the caller's context
    (app/clean_context.py): a connection outlives the turn that happened to open it."""

    class FreshContextConnection(base):  # type: ignore[valid-type,misc]
        async def connect(self) -> None:
            if not self.is_connected:
                await in_fresh_context(super().connect())

    FreshContextConnection.__name__ = f"FreshContext{base.__name__}"
    return FreshContextConnection


def fresh_cluster_connections(client: RedisCluster) -> RedisCluster:
    """A cluster client whose connections open outside the turn's context, as in the
    single-server pool: the nodes found later are built from its public connection
    kwargs, the ones it starts from carry the class themselves."""
    fresh = cast(type[Connection], fresh_context_connections(Connection))
    client.connection_kwargs["connection_class"] = fresh
    for node in client.startup_nodes:
        node.connection_class = fresh
    return client


class RedisBackend(Backend):
    unavailable_errors = (RedisError, RedisVLError, OSError)

    def __init__(self, saver: AsyncRedisSaver | PlainRedisSaver, client: RedisClient, where: str,
                 ttl_s: int, timeout_s: float, metrics: Metrics | None = None,
                 lease_s: float = 10.0) -> None:
        #: the module-free checkpointer (app/persistence/plain.py) rather than
        #: langgraph-checkpoint-redis (RedisJSON + RediSearch)
        self.plain = isinstance(saver, PlainRedisSaver)
        kind = "plain checkpointer" if self.plain else "langgraph-checkpoint-redis"
        super().__init__(saver, f"Redis at {where} (TTL {ttl_s}s, {kind})", metrics)
        self._lease_s = lease_s
        #: MODULE LIST already answered with both modules (by ``auto`` at start)
        self._modules_found = False
        self.checkpointer: AsyncRedisSaver | PlainRedisSaver = saver
        self.client = client
        self._timeout_s = timeout_s
        self._where = where
        self._last_repair = -RECOVER_INTERVAL_S
        self._needs_setup = False
        self._setup_error: str | None = None

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings,
                   metrics: Metrics | None = None) -> AsyncIterator[RedisBackend]:
        assert settings.redis_url is not None
        url = settings.redis_url.get_secret_value()
        cluster = settings.redis_cluster
        if cluster is None:
            cluster = await _is_cluster(url, settings.redis_timeout_s)
        if cluster:
            async with cls._open_cluster(settings, url, metrics) as backend:
                yield backend
            return
        where = redact_url(url)
        pool: BlockingConnectionPool = BlockingConnectionPool.from_url(
            url, timeout=settings.redis_timeout_s, **connection_options(settings))
        pool.connection_class = fresh_context_connections(pool.connection_class)
        client = OrjsonRedis(connection_pool=pool)
        try:
            saver: AsyncRedisSaver | PlainRedisSaver
            plain, modules_found = await _use_plain(settings, client, where)
            if plain:
                # LangGraph's own serde (msgpack), as the in-memory store: the Redis
                # library's JSON one costs ~4 ms a turn more on a 40-message thread
                saver = PlainRedisSaver(client, ttl_s=settings.history_ttl_s,
                                        refresh_on_read=settings.history_refresh_on_read)
            else:
                saver = AsyncRedisSaver(
                    redis_client=client,
                    ttl={
                        "default_ttl": settings.history_ttl_s / 60,
                        "refresh_on_read": settings.history_refresh_on_read,
                    },
                )
                saver.serde = CachedClassSerializer()
                # PRIVATE (tests/test_library_privates.py, tests/persistence/test_redis.py):
                # the saver caches the key of every checkpoint it touches, up to 1,000,
                # never evicting.
                # A thread keeps only its latest checkpoint, so the cache fills with the
                # keys of deleted ones and then stops helping; building a key is cheap.
                saver._key_cache_max_size = 0
            backend = cls(saver, client, where, settings.history_ttl_s,
                          settings.redis_timeout_s, metrics, settings.thread_lease_s)
            backend._modules_found = modules_found
            try:
                await backend._set_up()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                # Serve anyway: chat answers 503 storage_unavailable at once, readiness
                # says why, and the first use after Redis is back sets it up.
                backend._needs_setup = True
                logger.warning("Redis at %s is unreachable at start (%r): serving 503 "
                               "storage_unavailable until it is back", where, exc)
            except RedisError as exc:
                raise ConfigError(f"cannot use Redis at {where}: {exc}") from exc
            yield backend
        finally:
            await client.aclose()
            await pool.disconnect()

    @classmethod
    @asynccontextmanager
    async def _open_cluster(cls, settings: Settings, url: str,
                            metrics: Metrics | None) -> AsyncIterator[RedisBackend]:
        """Redis Cluster: redis-py's cluster client (slots followed, MOVED handled), the
        plain checkpointer (one hash per thread, a hash tag per thread), and keys of one
        thread, or of the tenant store, in one slot."""
        where = f"{redact_url(url)} (cluster)"
        if settings.redis_checkpointer == "langgraph":
            raise ConfigError(f"Redis at {where} is a cluster: langgraph-checkpoint-redis "
                              "needs RediSearch over the whole keyspace; set "
                              "AGENTHOST_REDIS_CHECKPOINTER=plain or auto")
        client = fresh_cluster_connections(
            RedisCluster.from_url(url, **connection_options(settings)))
        try:
            saver = PlainRedisSaver(client, ttl_s=settings.history_ttl_s,
                                    refresh_on_read=settings.history_refresh_on_read)
            backend = cls(saver, client, where, settings.history_ttl_s,
                          settings.redis_timeout_s, metrics, settings.thread_lease_s)
            try:
                await backend._set_up()
            except (RedisConnectionError, RedisTimeoutError, RedisClusterException,
                    OSError) as exc:
                backend._needs_setup = True
                logger.warning("Redis Cluster at %s is unreachable at start (%r): serving "
                               "503 storage_unavailable until it is back", where, exc)
            yield backend
        finally:
            await client.aclose()

    async def _set_up(self) -> None:
        """Check the modules and create the search indexes (idempotent)."""
        if isinstance(self.checkpointer, PlainRedisSaver):
            await self.client.ping()  # nothing to set up: reachable is enough
        else:
            if not self._modules_found:
                assert isinstance(self.client, Redis)  # never the cluster client
                await _require_modules(self.client, self._where)
            await self.checkpointer.asetup()
        self._needs_setup = False

    def thread_lock(self, key: str, wait_s: float) -> AbstractAsyncContextManager[Any]:
        """A Redis lease on the thread, so replicas sharing this Redis never interleave
        turns on it; safe against Redis stalls (app/persistence/locks.py)."""
        return ThreadLease(self.client, lock_key(key), lease_s=self._lease_s,
                           wait_s=wait_s, thread_id=key,
                           prefetch=(self.checkpointer
                                     if isinstance(self.checkpointer, PlainRedisSaver)
                                     else None))

    async def after_turn(self, key: str) -> None:
        if isinstance(self.checkpointer, AsyncRedisSaver):  # the plain one keeps one only
            await self.checkpointer.aprune([key], keep_last=1)

    def tenant_store(self, registry: TenantRegistry, known_tools: Iterable[str],
                     settings: Settings) -> TenantStore:
        """Tenants in a Redis hash shared by every worker and replica."""
        return RedisTenantStore(registry, known_tools, self.client,
                                settings.tenant_sync_interval_s)

    async def recover(self) -> None:
        """Recreate the search indexes, which a Redis restarted empty no longer has.

        Runs after a storage failure, at most once per few seconds.
        """
        now = time.monotonic()
        if now - self._last_repair < RECOVER_INTERVAL_S:
            return
        self._last_repair = now
        try:
            async with asyncio.timeout(self._timeout_s):
                if self._needs_setup:
                    await self._set_up()
                    logger.warning("%s is reachable again; set up", self.description)
                    return
                if isinstance(self.checkpointer, PlainRedisSaver):
                    return  # no indexes to lose
                indexes = await self.client.execute_command("FT._LIST")
                names = {i.decode() if isinstance(i, bytes) else str(i) for i in indexes}
                if not {"checkpoint", "checkpoint_write"} <= names:
                    await self.checkpointer.asetup()
                    logger.warning("%s had lost its search indexes; recreated them",
                                   self.description)
        except ConfigError as exc:  # reachable, but without the modules
            self._setup_error = str(exc)
            logger.error("%s", exc)
        except (RedisError, RedisVLError, OSError, TimeoutError) as exc:
            logger.info("%s still unusable: %r", self.description, exc)

    async def purge_tenant(self, tenant_id: str) -> int:
        """Every key of every thread of the tenant, found by SCAN (never KEYS) and removed
        with UNLINK in batches of ``PURGE_BATCH``, plus its running-turn count."""
        prefix = glob_escape(thread_key(tenant_id, ""))
        threads = 0
        async with self.guard():
            # thread keys end "<kind>:<tenant>/<thread>:...": the latest pointers first
            # (one per thread, counted), then every other key of those threads
            patterns: tuple[str, ...] = ((f"{THREAD_PREFIX}{{{prefix}*",) if self.plain
                        else (f"checkpoint_latest:{prefix}*", f"*:{prefix}*"))
            # and its rate-limit window (the limits library's key: LIMITER/<tenant>/...)
            patterns += (f"agenthost:rate*/{glob_escape(tenant_id)}/*",)
            for pattern in patterns:
                batch: list[bytes] = []
                async for key in self.client.scan_iter(match=pattern, count=PURGE_BATCH):
                    batch.append(key)
                    if len(batch) >= PURGE_BATCH:
                        threads += await self._unlink(batch, pattern)
                        batch = []
                if batch:
                    threads += await self._unlink(batch, pattern)
            await self.client.unlink(f"agenthost:tenant-running:{tenant_id}")
        return threads

    async def _unlink(self, keys: list[bytes], pattern: str) -> int:
        removed = int(await self.client.unlink(*keys))
        counted = pattern.startswith(("checkpoint_latest:", THREAD_PREFIX))
        return removed if counted else 0

    async def unavailable(self, exc: BaseException, during: str) -> StorageUnavailable:
        if isinstance(exc, RedisConnectionError | OSError) and isinstance(self.client, Redis):
            # The other idle connections most likely died the same way: drop them all
            # now rather than let each fail one more request. (The cluster client drops
            # a node's connections itself when the node fails.)
            await self.client.connection_pool.disconnect(inuse_connections=False)
        return await super().unavailable(exc, during)

    async def check(self) -> str | None:
        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            return f"redis unreachable: {type(exc).__name__}"
        await self.recover()
        if self._setup_error is not None:
            return self._setup_error
        if self._needs_setup:
            return "redis reachable but not set up yet"
        return None

    def stats(self) -> dict[str, Any]:
        return {"backend": "redis", "where": self.description}
