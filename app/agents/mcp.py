"""Tenant MCP tools through langchain-mcp-adapters, loaded when a tenant first needs them.

A server that cannot be reached (or times out) costs the tenant its tools, never the
request: the loader reports which servers failed so the agent cache retries them later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.tools import BaseTool
from langchain_mcp_adapters.client import MultiServerMCPClient

from app.observability.metrics import Metrics
from app.tenants.registry import McpServerConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class McpTools:
    tools: tuple[BaseTool, ...]
    failed: tuple[str, ...]  # names of the servers that could not be used


class McpToolLoader:
    def __init__(self, timeout_s: float, metrics: Metrics | None = None) -> None:
        self.timeout_s = timeout_s
        self._metrics = metrics or Metrics()

    async def _load_one(self, tenant_id: str, server: McpServerConfig) -> list[BaseTool]:
        connection: Any = {"url": server.url, "transport": server.transport,
                           "timeout": self.timeout_s}
        client = MultiServerMCPClient({server.name: connection})
        async with asyncio.timeout(self.timeout_s):
            return await client.get_tools(server_name=server.name)

    async def load(self, tenant_id: str, servers: Sequence[McpServerConfig]) -> McpTools:
        if not servers:
            return McpTools((), ())
        results = await asyncio.gather(
            *(self._load_one(tenant_id, server) for server in servers), return_exceptions=True
        )
        tools: list[BaseTool] = []
        failed: list[str] = []
        for server, result in zip(servers, results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                failed.append(server.name)
                self._metrics.mcp_failures.inc()
                logger.warning("tenant %s: MCP server %s at %s unusable, running without its "
                               "tools: %r", tenant_id, server.name, server.url, result)
            else:
                tools.extend(result)
        return McpTools(tuple(tools), tuple(failed))
