"""Tenant configuration: the schema, and the registry loaded from ``config/tenants.yaml``."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.errors import ConfigError

logger = logging.getLogger(__name__)

ID_PATTERN = r"^[A-Za-z0-9._:+@-]{1,128}$"
_ID_RE = re.compile(ID_PATTERN)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class McpServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    url: str = Field(pattern=r"^https?://")
    transport: Literal["streamable_http", "sse"] = "streamable_http"


class HistoryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_messages: int | None = Field(None, ge=1, le=1000)


class TenantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    system_prompt: str = Field("You are a helpful assistant.", max_length=65536)
    model: str | None = Field(None, min_length=1, max_length=128)
    temperature: float | None = Field(None, ge=0, le=2)
    tools: tuple[str, ...] = ()
    mcp_servers: tuple[McpServerConfig, ...] = ()
    history: HistoryConfig = HistoryConfig()
    api_keys_sha256: tuple[str, ...] = ()
    #: None: the settings' default (AGENTHOST_TENANT_TURNS_PER_MINUTE /
    #: AGENTHOST_TENANT_CONCURRENT_TURNS); 0: no limit
    turns_per_minute: int | None = Field(None, ge=0)
    concurrent_turns: int | None = Field(None, ge=0)

    @field_validator("api_keys_sha256")
    @classmethod
    def _hex_digests(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        lowered = tuple(v.lower() for v in value)
        for digest in lowered:
            if not _SHA256_RE.match(digest):
                raise ValueError("api_keys_sha256 entries must be 64 hex characters")
        return lowered


def parse_tenants(raw: Mapping[str, Any], known_tools: Iterable[str]) -> dict[str, TenantConfig]:
    """Validate a ``{tenant_id: config}`` mapping; errors name the tenant and the field."""
    tools = set(known_tools)
    tenants: dict[str, TenantConfig] = {}
    for tenant_id, body in raw.items():
        if not isinstance(tenant_id, str) or not _ID_RE.match(tenant_id):
            raise ConfigError(f"tenant id {tenant_id!r} must match {ID_PATTERN}")
        try:
            config = TenantConfig.model_validate(body or {})
        except ValidationError as exc:
            raise ConfigError(f"tenant {tenant_id!r}: {exc}") from exc
        unknown = [name for name in config.tools if name not in tools]
        if unknown:
            raise ConfigError(
                f"tenant {tenant_id!r} names unknown tools {unknown}; known: {sorted(tools)}"
            )
        tenants[tenant_id] = config
    return tenants


def load_tenants_file(path: Path, known_tools: Iterable[str]) -> dict[str, TenantConfig]:
    if not path.is_file():
        raise ConfigError(f"tenants file {path} does not exist (set AGENTHOST_TENANTS_FILE)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"tenants file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"tenants file {path} must map tenant ids to configs")
    return parse_tenants(raw, known_tools)


class TenantRegistry:
    """Tenant configs by id. Reads are plain dict lookups on the request path.

    Changes (admin API, other workers) replace a tenant's config object, so holders of the
    old object (a turn in flight, a cached agent) are never modified under them.
    """

    def __init__(self, tenants: Mapping[str, TenantConfig]) -> None:
        self._tenants: dict[str, TenantConfig] = {}
        self._key_owners: dict[str, str] = {}
        self.replace_all(tenants)

    def get(self, tenant_id: str) -> TenantConfig | None:
        return self._tenants.get(tenant_id)

    def ids(self) -> list[str]:
        return sorted(self._tenants)

    def items(self) -> list[tuple[str, TenantConfig]]:
        return list(self._tenants.items())

    def __len__(self) -> int:
        return len(self._tenants)

    @property
    def any_keys(self) -> bool:
        return bool(self._key_owners)

    def owner_of_key(self, key: str) -> str | None:
        """The tenant a key belongs to (keys are stored as SHA-256 digests)."""
        return self._key_owners.get(hash_key(key))

    def check_keys(self, tenant_id: str, config: TenantConfig) -> None:
        """Refuse a config whose keys already belong to another tenant."""
        for digest in config.api_keys_sha256:
            owner = self._key_owners.get(digest)
            if owner is not None and owner != tenant_id:
                raise ConfigError(f"tenants {owner!r} and {tenant_id!r} share an API key")

    def put(self, tenant_id: str, config: TenantConfig) -> None:
        self.check_keys(tenant_id, config)
        self._drop_keys(tenant_id)
        self._tenants[tenant_id] = config
        for digest in config.api_keys_sha256:
            self._key_owners[digest] = tenant_id

    def remove(self, tenant_id: str) -> bool:
        self._drop_keys(tenant_id)
        return self._tenants.pop(tenant_id, None) is not None

    def replace_all(self, tenants: Mapping[str, TenantConfig]) -> None:
        self._tenants.clear()
        self._key_owners.clear()
        for tenant_id, config in tenants.items():
            self.put(tenant_id, config)

    def _drop_keys(self, tenant_id: str) -> None:
        old = self._tenants.get(tenant_id)
        if old is not None:
            for digest in old.api_keys_sha256:
                if self._key_owners.get(digest) == tenant_id:
                    del self._key_owners[digest]
