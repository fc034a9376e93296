"""Operations: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import asyncio
import os
from typing import Annotated, Any

from fastapi import APIRouter, Header, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import OperatorDep, StateDep, may_see_details
from app.api.responses import errors

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers. Touches nothing else."""
    return {"status": "ok"}


@router.get("/health/ready", responses={503: {
    "description": "not ready: the same body, saying which check failed"}})
async def ready(
    state: StateDep, authorization: Annotated[str | None, Header()] = None
) -> JSONResponse:
    """Readiness: storage and the language model are reachable. While auth is on, where
    they are and why a check failed only with operator credentials (``may_see_details``)."""
    storage, upstream = await asyncio.gather(
        state.backend.check(), state.agent_factory.models.check_upstream()
    )
    body: dict[str, Any] = {
        "status": "ready" if storage is None and upstream is None else "not_ready",
        "auth": "on" if state.auth_enabled else "off",
    }
    if may_see_details(state, authorization):
        body.update(checks={"storage": storage or "ok", "upstream": upstream or "ok"},
                    storage=state.backend.description,
                    model=state.agent_factory.models.description,
                    tenants=len(state.tenants), embedded_defaults=state.defaults,
                    circuit=state.agent_factory.models.circuit)
    else:
        body["checks"] = {"storage": "ok" if storage is None else "failing",
                          "upstream": "ok" if upstream is None else "failing"}
    return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503)


@router.get("/cache-stats", responses=errors(401))
async def cache_stats(state: OperatorDep) -> dict[str, Any]:
    """The agent cache, the conversation store and live streams of this worker."""
    return {
        "worker_pid": os.getpid(),
        "agent_cache": state.agents.stats(),
        "persistence": state.backend.stats(),
        "streams": state.streams.stats(),
    }


class PrometheusResponse(Response):
    media_type = CONTENT_TYPE_LATEST


@router.get("/metrics", response_class=PrometheusResponse, responses={200: {
    "description": "every worker's metrics in Prometheus's text format",
    "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}})
async def metrics(state: StateDep) -> PrometheusResponse:
    return PrometheusResponse(state.metrics.render())
