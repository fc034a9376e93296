"""Dependency aliases: handlers receive app objects and the authorized tenant through these.

Dependencies are ``async def`` although they never await: FastAPI runs a plain ``def``
dependency in a worker thread, a thread hop per dependency per request.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Iterable
from typing import Annotated, Literal

from fastapi import Depends, Header, Path, Request
from pydantic import SecretStr

from app.errors import TenantNotFound, Unauthorized
from app.state import AppState
from app.tenants.registry import ID_PATTERN, TenantConfig


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.agenthost
    return state


StateDep = Annotated[AppState, Depends(get_state)]
TenantId = Annotated[str, Path(pattern=ID_PATTERN, description="Tenant id")]
ThreadId = Annotated[str, Path(pattern=ID_PATTERN, description="Thread id")]


#: 401s, one INFO line each (route and reason, never the key): the audit trail
audit = logging.getLogger("app.audit")
# RFC 7235: credentials = auth-scheme 1*SP token68, the scheme case-insensitive;
# RFC 6750: a bearer token is a token68 (b64token).
_CREDENTIALS = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+) +([A-Za-z0-9._~+/-]+=*) *")


def bearer_token(authorization: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>`` as RFC 7235/6750 read it, else None."""
    if not authorization:
        return None
    match = _CREDENTIALS.fullmatch(authorization)
    if match is None or match.group(1).lower() != "bearer":
        return None
    return match.group(2)


def refused(request: Request, reason: str, message: str) -> Unauthorized:
    client = request.client.host if request.client else "-"
    audit.info("401 %s %s from %s: %s", request.method, request.url.path, client, reason)
    return Unauthorized(message, headers={"WWW-Authenticate": "Bearer"})


def credentials_reason(authorization: str | None) -> str:
    if not authorization:
        return "no Authorization header"
    return "Authorization is not 'Bearer <token>'"


async def authorized_tenant(
    state: StateDep,
    request: Request,
    tenant_id: TenantId,
    authorization: Annotated[str | None, Header()] = None,
) -> TenantConfig:
    """The tenant's config, if the caller may act on it.

    A tenant key for another tenant gets the same 404 as a tenant that does not exist,
    so keys cannot be used to probe which tenants exist.
    """
    scope = key_scope(state, request, authorization)
    config = state.tenants.get(tenant_id) if scope in (None, tenant_id) else None
    if config is None:
        raise TenantNotFound(f"no tenant {tenant_id!r}")
    return config


def matches(token: str, secrets: Iterable[SecretStr | None]) -> bool:
    """Is ``token`` one of ``secrets`` (compared in constant time)?"""
    return any(secret is not None and hmac.compare_digest(
        token.encode(), secret.get_secret_value().encode()) for secret in secrets)


def key_scope(state: AppState, request: Request, authorization: str | None) -> str | None:
    """The tenant the caller's key reaches; None for every tenant (a service key, or auth
    off). ``Unauthorized`` (audited) without a known key while auth is on."""
    if not state.auth_enabled:
        return None
    token = bearer_token(authorization)
    if token is None:
        raise refused(request, credentials_reason(authorization),
                      "send 'Authorization: Bearer <key>' with a tenant or service key")
    if matches(token, state.settings.service_api_keys):
        return None
    owner = state.tenants.owner_of_key(token)
    if owner is None:
        raise refused(request, "unknown key", "unknown key")
    return owner


TenantDep = Annotated[TenantConfig, Depends(authorized_tenant)]
#: a message on a thread whose previous turn still runs: wait for it, or 409 at once
BusyPolicy = Annotated[Literal["enqueue", "reject"] | None, Header(
    alias="X-Busy-Policy",
    description="enqueue: wait up to AGENTHOST_THREAD_WAIT_S for the thread's previous "
    "turn; reject: 409 thread_busy at once. Default: AGENTHOST_THREAD_BUSY_POLICY.")]


def may_see_details(state: AppState, authorization: str | None) -> bool:
    """Operators' details (addresses, cache contents): open while auth is off; else for
    the ops token, the admin token or a service key."""
    if not state.auth_enabled:
        return True
    token = bearer_token(authorization)
    settings = state.settings
    return token is not None and matches(
        token, [*settings.service_api_keys, settings.ops_token, settings.admin_token])


async def operator(
    state: StateDep, request: Request, authorization: Annotated[str | None, Header()] = None
) -> AppState:
    if not may_see_details(state, authorization):
        raise refused(request, "no ops credentials",
                      "send 'Authorization: Bearer <ops token>' (or the admin token or a "
                      "service key)")
    return state


OperatorDep = Annotated[AppState, Depends(operator)]
