"""Operations: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import StateDep

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers. Touches nothing else."""
    return {"status": "ok"}


@router.get("/health/ready")
async def ready(state: StateDep) -> JSONResponse:
    """Readiness: storage and the language model are reachable."""
    storage, upstream = await asyncio.gather(
        state.backend.check(), state.agent_factory.models.check_upstream()
    )
    checks = {"storage": storage or "ok", "upstream": upstream or "ok"}
    body: dict[str, Any] = {
        "status": "ready" if storage is None and upstream is None else "not_ready",
        "checks": checks,
        "storage": state.backend.description,
        "model": state.agent_factory.models.description,
        "tenants": len(state.tenants),
        "auth": "on" if state.auth_enabled else "off",
        "embedded_defaults": state.defaults,
    }
    return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503)


@router.get("/cache-stats")
async def cache_stats(state: StateDep) -> dict[str, Any]:
    """The agent cache, the conversation store and live streams of this worker."""
    return {
        "worker_pid": os.getpid(),
        "agent_cache": state.agents.stats(),
        "persistence": state.backend.stats(),
        "streams": state.streams.stats(),
    }


@router.get("/metrics")
async def metrics(state: StateDep) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
