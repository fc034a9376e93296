"""Memory: ``GET /health/memory`` for operators, and the admin's allocation report.

The ballast routes (``/v1/admin/memory/ballast``) exist only when the test-only setting
``AGENTHOST_MEMORY_TEST_ALLOCATIONS`` is on: tests use them to reach every pressure level
with real memory.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from app.api.deps import StateDep
from app.api.responses import BODY, errors
from app.api.routes.admin import AdminDep
from app.errors import TracingOff
from app.memory.usage import MIB

router = APIRouter(tags=["operations"])
admin_router = APIRouter(prefix="/v1/admin/memory", tags=["admin"],
                         responses=errors(401, 403, 404, 422))
ballast_router = APIRouter(prefix="/v1/admin/memory", tags=["testing"],
                           responses={**errors(401, 403), **BODY})


@router.get("/health/memory")
async def health_memory(state: StateDep) -> dict[str, Any]:
    """Pressure level, usage against the limit, growth trend, and what the caches hold."""
    report = state.governor.report()
    agents = state.agents.stats()
    report["caches"] = {
        "agent_cache": {key: agents[key] for key in (
            "entries", "max_entries", "estimated_bytes", "budget_bytes", "squeezed")},
        "conversations": state.backend.stats(),
        "streams": {key: value for key, value in state.streams.stats().items()
                    if key in ("active", "reading", "queue_high_water")},
    }
    return report


@admin_router.get("/allocations")
async def allocations(state: AdminDep,
                      limit: Annotated[int, Query(ge=1, le=200)] = 20) -> dict[str, Any]:
    """Allocation sites that grew most since the previous call (the first: since startup)."""
    if state.tracer is None:
        raise TracingOff("allocation tracing is off; start the service with "
                         "AGENTHOST_MEMORY_TRACEMALLOC=true (it costs CPU)")
    return state.tracer.top(limit)


class BallastIn(BaseModel):
    mb: int = Field(ge=1, le=4096)


@ballast_router.post("/ballast")
async def grow_ballast(state: AdminDep, body: BallastIn) -> dict[str, Any]:
    assert state.ballast is not None
    held = state.ballast.grow(body.mb)
    return {"ballast_mb": held / MIB}


@ballast_router.delete("/ballast")
async def release_ballast(state: AdminDep) -> dict[str, Any]:
    assert state.ballast is not None
    released = state.ballast.release()
    return {"released_mb": released / MIB}
