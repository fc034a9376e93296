"""``create_app``: builds every long-lived object in the lifespan and closes it in reverse."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from app.agents.cache import AgentCache
from app.agents.factory import AgentFactory
from app.agents.graph import build_agent_graph
from app.agents.mcp import McpToolLoader
from app.agents.tools import ToolRegistry, build_builtin_tools
from app.api.middleware.body_limit import BodyLimitMiddleware
from app.api.middleware.request_id import RequestIdMiddleware
from app.api.middleware.response_metrics import ResponseMetricsMiddleware
from app.api.routes import admin, chat, health, memory, openai_compat, stream
from app.api.routes.page import page_router
from app.errors import ConfigError, install_error_handlers
from app.janitor import Janitor
from app.llm.pool import ModelPool
from app.memory.ballast import Ballast
from app.memory.governor import MemoryGovernor, Meter
from app.memory.tracing import AllocationTracer
from app.memory.usage import WORKERS_ENV, MemoryMeter
from app.observability.metrics import Metrics
from app.persistence.backend import open_backend
from app.persistence.base import Backend
from app.persistence.redis import RedisBackend, lock_key
from app.state import AppState, decide_auth
from app.streaming.hub import StreamHub
from app.streaming.replay import MemoryReplay, Replay
from app.streaming.replay_redis import RedisReplay
from app.tenants.limits import TenantLimiter
from app.tenants.registry import TenantRegistry, load_tenants_file
from app.turns.runner import TurnRunner
from config.settings import Settings

logger = logging.getLogger(__name__)


def _embedded_defaults(state: AppState) -> list[str]:
    settings = state.settings
    said = []
    if settings.offline_model:
        said.append("model: offline built-in model, because OPENAI_API_KEY is not set")
    if not settings.redis_configured:
        budget = state.backend.stats().get("max_bytes")
        in_bytes = f", {budget / 2**20:.0f} MiB" if budget else ""
        said.append(
            f"persistence: bounded in-memory ({settings.memory_max_threads} threads{in_bytes}, "
            "lost on restart), because REDIS_URL is not set"
        )
    if settings.tenants_file == Settings.model_fields["tenants_file"].default:
        said.append(f"tenants: {len(state.tenants)} from the bundled {settings.tenants_file}")
    if not state.auth_enabled:
        said.append(
            f"auth: off, because no service or tenant keys are set; bound to {settings.host}"
        )
    return said


async def build_state(settings: Settings, stack: AsyncExitStack, metrics: Metrics,
                      meter: Meter | None = None) -> AppState:
    tools = ToolRegistry(build_builtin_tools())
    file_tenants = load_tenants_file(settings.tenants_file, tools.names())
    tenants = TenantRegistry({})
    tracer = None
    if settings.memory_tracemalloc:  # first, so that what the app builds is traced too
        tracer = AllocationTracer()
        tracer.start()
        stack.callback(tracer.stop)
    governor = MemoryGovernor(settings, meter or MemoryMeter(settings.memory_limit_mb),
                              metrics=metrics, workers=int(os.environ.get(WORKERS_ENV) or 1))
    models = ModelPool(settings, metrics)
    stack.push_async_callback(models.aclose)
    backend = await stack.enter_async_context(
        open_backend(settings, metrics, memory_limit_bytes=governor.limit.bytes))
    tenant_store = backend.tenant_store(tenants, tools.names(), settings)
    await tenant_store.load(file_tenants)
    agent_factory = AgentFactory(build_agent_graph(backend.checkpointer), models, tools, settings,
                                 McpToolLoader(settings.mcp_timeout_s, metrics))
    agents = AgentCache(
        agent_factory.build,
        max_entries=settings.agent_cache_max_entries,
        max_bytes=settings.agent_cache_max_bytes,
        ttl_s=settings.agent_cache_ttl_s,
        retry_s=settings.mcp_retry_s,
        metrics=metrics,
    )
    tenant_store.on_change(agents.invalidate)
    await tenant_store.start()
    stack.push_async_callback(tenant_store.stop)
    for _, config in tenants.items():  # first requests should not pay for client setup
        models.get(config.model or settings.default_model)
    replay = open_replay(settings, backend)
    stack.push_async_callback(replay.aclose)
    streams = StreamHub(settings, metrics=metrics, replay=replay)
    janitor_sweeps = [*streams.sweeps(), *backend.sweeps(), *replay.sweeps()]
    limiter = TenantLimiter(settings, getattr(backend, "client", None))
    stack.push_async_callback(limiter.aclose)  # after the turns, before the backend
    # Registered after the backend: on exit, running turns finish before it closes.
    stack.push_async_callback(streams.aclose, settings.shutdown_grace_s)
    janitor = Janitor(settings.janitor_interval_s, metrics)
    janitor.add("agent_cache", agents.sweep)
    governor.on_pressure(agents.relieve)
    governor.on_pressure(backend.relieve)
    governor.on_pressure(replay.relieve)
    janitor.add("memory", governor.sample, settings.memory_sample_s)
    for name, sweep, interval in janitor_sweeps:
        janitor.add(name, sweep, interval)
    state = AppState(
        settings=settings,
        tenants=tenants,
        tenant_store=tenant_store,
        backend=backend,
        agent_factory=agent_factory,
        agents=agents,
        runner=TurnRunner(agent_factory.graph, backend, settings, metrics),
        limiter=limiter,
        streams=streams,
        janitor=janitor,
        metrics=metrics,
        governor=governor,
        tracer=tracer,
        ballast=Ballast() if settings.memory_test_allocations else None,
    )
    await governor.sample()  # the level is known before the first request
    governor.warn_if_no_turn_fits()
    state.auth_enabled = decide_auth(settings, tenants.any_keys)
    if state.auth_enabled and not settings.service_api_keys:
        keyless = [tenant_id for tenant_id, config in tenants.items()
                   if not config.api_keys_sha256]
        if not tenants.any_keys and settings.admin_token is None:
            raise ConfigError(
                f"refusing to serve {settings.host} with auth off: set "
                "AGENTHOST_SERVICE_API_KEYS or tenant api_keys_sha256, bind 127.0.0.1, or "
                "set AGENTHOST_ALLOW_PUBLIC_WITHOUT_AUTH=true"
            )
        if keyless:
            logger.warning("auth is on and there are no service keys: tenants without "
                           "api_keys_sha256 cannot be reached: %s", ", ".join(keyless))
    state.defaults = _embedded_defaults(state)
    return state


def open_replay(settings: Settings, backend: Backend) -> Replay:
    """Where streamed turns are kept for rejoining: Redis when there is one (any worker
    or replica can serve a rejoin), else this worker."""
    if settings.stream_replay_s <= 0:
        return Replay()
    if isinstance(backend, RedisBackend):
        return RedisReplay(
            backend.client, settings.stream_replay_s, settings.stream_replay_max_events,
            live_s=settings.turn_timeout_s + settings.shutdown_grace_s,
            block_s=min(1.0, settings.redis_timeout_s / 2),
            max_readers=max(1, settings.redis_max_connections // 2), lock_key=lock_key)
    return MemoryReplay(settings.stream_replay_s, settings.stream_replay_max_events,
                        settings.stream_replay_max_bytes, settings.stream_max_age_s)


def create_app(settings: Settings | None = None, *, meter: Meter | None = None) -> FastAPI:
    """The app; ``meter`` replaces the memory reading (in-process tests drive pressure)."""
    resolved = settings or Settings()
    # Built with the app, not in the lifespan, so that the middleware counts into it too.
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            state = await build_state(resolved, stack, metrics, meter)
            app.state.agenthost = state
            limit = state.governor.limit
            logger.info(
                "agenthost ready: %s; %s; %d tenants; auth %s; memory limit %.0f MiB (%s), "
                "%s",
                state.agent_factory.models.description,
                state.backend.description,
                len(state.tenants),
                "on" if state.auth_enabled else "off",
                limit.bytes / 2**20, limit.source,
                f"pressure {state.governor.level.label}",
            )
            if state.ballast is not None:
                logger.warning("test-only memory ballast routes are on "
                               "(AGENTHOST_MEMORY_TEST_ALLOCATIONS): never in production")
            for sentence in state.defaults:
                logger.info("embedded default in force: %s", sentence)
            state.janitor.start()
            stack.push_async_callback(state.janitor.stop)
            yield
            logger.info("agenthost shutting down")

    app = FastAPI(title="agenthost", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(chat.router)
    app.include_router(stream.router)
    app.include_router(admin.router)
    app.include_router(openai_compat.router)
    app.include_router(health.router)
    app.include_router(memory.router)
    app.include_router(memory.admin_router)
    if resolved.chat_page:
        app.include_router(page_router())
    if resolved.memory_test_allocations:
        app.include_router(memory.ballast_router)
    # Outermost last: the request id wraps everything, including 413 refusals.
    app.add_middleware(BodyLimitMiddleware, max_bytes=resolved.max_body_bytes,
                       read_timeout_s=resolved.body_read_timeout_s)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(ResponseMetricsMiddleware, counter=metrics.http_responses)
    return app
