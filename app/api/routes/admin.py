"""Admin: list, read, create or replace, and delete tenant configs."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from app.api.deps import (
    StateDep,
    TenantId,
    bearer_token,
    credentials_reason,
    matches,
    refused,
)
from app.api.responses import BODY, errors
from app.errors import (
    AdminDisabled,
    ConfigError,
    InvalidRequest,
    TenantNotFound,
    TenantUnreachable,
)
from app.state import AppState
from app.tenants.registry import TenantConfig


async def require_admin(
    state: StateDep, request: Request, authorization: Annotated[str | None, Header()] = None
) -> AppState:
    expected = state.settings.admin_token
    if expected is None:
        raise AdminDisabled("the admin API is off; set AGENTHOST_ADMIN_TOKEN to turn it on")
    token = bearer_token(authorization)
    if token is None:
        raise refused(request, credentials_reason(authorization),
                      "send 'Authorization: Bearer <admin token>'")
    if not matches(token, [expected]):
        raise refused(request, "wrong admin token",
                      "send 'Authorization: Bearer <admin token>'")
    return state


AdminDep = Annotated[AppState, Depends(require_admin)]
logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/admin/tenants", tags=["admin"],
                   responses=errors(401, 403, 404, 422))


def _tenant_body(tenant_id: str, config: TenantConfig) -> dict[str, Any]:
    return {"tenant_id": tenant_id, "config": config.model_dump(mode="json")}


@router.get("")
async def list_tenants(state: AdminDep) -> dict[str, Any]:
    ids = state.tenants.ids()
    return {"tenants": ids, "count": len(ids), "store": state.tenant_store.description}


@router.get("/{tenant_id}")
async def get_tenant(state: AdminDep, tenant_id: TenantId) -> dict[str, Any]:
    config = state.tenants.get(tenant_id)
    if config is None:
        raise TenantNotFound(f"no tenant {tenant_id!r}")
    return _tenant_body(tenant_id, config)


@router.put("/{tenant_id}", responses={**BODY, **errors(409), 201: {
    "description": "created (200: an existing tenant replaced), with the same body"}})
async def put_tenant(
    state: AdminDep, tenant_id: TenantId, config: TenantConfig, response: Response
) -> dict[str, Any]:
    if state.auth_enabled and not state.settings.service_api_keys and not (
            config.api_keys_sha256):
        raise TenantUnreachable(
            f"auth is on and there are no service keys: tenant {tenant_id!r} without "
            "api_keys_sha256 could not be reached by anyone; give it a key")
    try:
        created = await state.tenant_store.put(tenant_id, config)
    except ConfigError as exc:
        raise InvalidRequest(str(exc)) from exc
    response.status_code = 201 if created else 200
    return _tenant_body(tenant_id, config)


@router.delete("/{tenant_id}", status_code=204, responses={200: {
    "description": "with purge=true: the tenant and its threads are gone",
    "content": {"application/json": {"schema": {
        "type": "object", "properties": {"tenant_id": {"type": "string"},
                                         "threads_deleted": {"type": "integer"}}}}}}})
async def delete_tenant(
    state: AdminDep, tenant_id: TenantId,
    purge: Annotated[bool, Query(description="also delete every thread of the tenant")] = False,
) -> Response:
    if not await state.tenant_store.delete(tenant_id):
        raise TenantNotFound(f"no tenant {tenant_id!r}")
    if not purge:
        return Response(status_code=204)
    deleted = await state.backend.purge_tenant(tenant_id)
    async with state.backend.guard():
        await state.streams.replay.forget_tenant(tenant_id)
    logger.info("tenant %s deleted with its %d threads", tenant_id, deleted)
    return JSONResponse({"tenant_id": tenant_id, "threads_deleted": deleted})
