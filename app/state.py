"""``AppState``: every long-lived object of one app, built in the lifespan."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.agents.cache import AgentCache
from app.agents.factory import AgentFactory
from app.janitor import Janitor
from app.memory.ballast import Ballast
from app.memory.governor import MemoryGovernor
from app.memory.tracing import AllocationTracer
from app.observability.metrics import Metrics
from app.persistence.base import Backend
from app.streaming.hub import StreamHub
from app.tenants.limits import TenantLimiter
from app.tenants.registry import TenantRegistry
from app.tenants.store import TenantStore
from app.turns.runner import TurnRunner
from config.settings import Settings


@dataclass(slots=True)
class AppState:
    settings: Settings
    tenants: TenantRegistry
    tenant_store: TenantStore
    backend: Backend
    agent_factory: AgentFactory
    agents: AgentCache
    runner: TurnRunner
    limiter: TenantLimiter
    streams: StreamHub
    janitor: Janitor
    metrics: Metrics
    governor: MemoryGovernor
    #: allocation tracing, when AGENTHOST_MEMORY_TRACEMALLOC is on
    tracer: AllocationTracer | None = None
    #: memory held on purpose, when the test-only AGENTHOST_MEMORY_TEST_ALLOCATIONS is on
    ballast: Ballast | None = None
    #: one plain sentence per embedded default in force (startup log and /health/ready)
    defaults: list[str] = field(default_factory=list)
    #: whether requests need a key: decided once at start (``decide_auth``), never
    #: inferred again from the tenants present, so no admin change can switch it off
    auth_enabled: bool = True


def decide_auth(settings: Settings, tenant_keys: bool) -> bool:
    """Auth is required on a non-loopback address (unless explicitly allowed off there)
    and whenever a service key, a tenant key or an admin token is configured."""
    configured = bool(settings.service_api_keys) or tenant_keys or (
        settings.admin_token is not None)
    if configured:
        return True
    return not settings.binds_loopback and not settings.allow_public_without_auth
