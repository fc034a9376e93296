"""Dependency aliases: handlers receive app objects and the authorized tenant through these.

Dependencies are ``async def`` although they never await: FastAPI runs a plain ``def``
dependency in a worker thread, a thread hop per dependency per request.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Path, Request

from app.errors import TenantNotFound, Unauthorized
from app.state import AppState
from app.tenants.registry import ID_PATTERN, TenantConfig


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.agenthost
    return state


StateDep = Annotated[AppState, Depends(get_state)]
TenantId = Annotated[str, Path(pattern=ID_PATTERN, description="Tenant id")]
ThreadId = Annotated[str, Path(pattern=ID_PATTERN, description="Thread id")]


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authorized_tenant(
    state: StateDep,
    tenant_id: TenantId,
    authorization: Annotated[str | None, Header()] = None,
) -> TenantConfig:
    """The tenant's config, if the caller may act on it.

    A tenant key for another tenant gets the same 404 as a tenant that does not exist,
    so keys cannot be used to probe which tenants exist.
    """
    config = state.tenants.get(tenant_id)
    if state.auth_enabled:
        token = bearer_token(authorization)
        if token is None:
            raise Unauthorized(
                "send 'Authorization: Bearer <key>' with a tenant or service key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        is_service = any(
            hmac.compare_digest(token.encode(), key.get_secret_value().encode())
            for key in state.settings.service_api_keys
        )
        if not is_service:
            owner = state.tenants.owner_of_key(token)
            if owner is None:
                raise Unauthorized("unknown key", headers={"WWW-Authenticate": "Bearer"})
            if owner != tenant_id:
                config = None
    if config is None:
        raise TenantNotFound(f"no tenant {tenant_id!r}")
    return config


TenantDep = Annotated[TenantConfig, Depends(authorized_tenant)]
