"""``AgentFactory``: what a worker builds once and every tenant's agent shares.

The compiled graph, the model pool, the builtin tools and the model bindings live here;
``clone`` makes a tenant's ``TenantAgent`` from its config, holding only references to the
shared parts plus the tenant's prompt, caps and any MCP tools of its own. Tenants with the
same model, temperature and builtin tools share one model binding (and its tool schemas).
"""

from __future__ import annotations

from collections.abc import Sequence

from cachetools import LRUCache
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import BaseMessage, SystemMessage
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool

from app.agents.cache import BuiltAgent
from app.agents.graph import AgentGraph, TenantAgent, build_agent_graph
from app.agents.mcp import McpToolLoader
from app.agents.tools import ToolRegistry
from app.llm.pool import ModelPool
from app.tenants.registry import TenantConfig
from config.settings import Settings

ModelBinding = Runnable[LanguageModelInput, BaseMessage]
# Distinct (model, temperature, builtin tools) combinations are few.
MAX_SHARED_BINDINGS = 512


class AgentFactory:
    def __init__(
        self,
        graph: AgentGraph,
        models: ModelPool,
        tools: ToolRegistry,
        settings: Settings,
        mcp: McpToolLoader | None = None,
    ) -> None:
        self.graph = graph
        #: the same graph without a checkpointer: stateless runs (the OpenAI-compatible
        #: endpoint without a thread) store nothing
        self.stateless_graph = build_agent_graph(None)
        self.models = models
        self.tools = tools
        self.mcp = mcp or McpToolLoader(settings.mcp_timeout_s)
        self._settings = settings
        self._bindings: LRUCache[tuple[str, float, tuple[str, ...]], ModelBinding] = LRUCache(
            maxsize=MAX_SHARED_BINDINGS
        )

    def _bind(self, model_name: str, temperature: float, tools: Sequence[BaseTool]) -> ModelBinding:
        model: ModelBinding = self.models.get(model_name)
        if tools:
            model = model.bind_tools(tools)  # type: ignore[attr-defined]
        return model.bind(temperature=temperature)

    def clone(self, tenant_id: str, config: TenantConfig,
              own_tools: Sequence[BaseTool] = ()) -> TenantAgent:
        settings = self._settings
        builtin = self.tools.select(config.tools)
        model_name = config.model or settings.default_model
        temperature = (
            config.temperature if config.temperature is not None else settings.default_temperature
        )
        if own_tools:
            model = self._bind(model_name, temperature, [*builtin, *own_tools])
        else:
            key = (model_name, temperature, tuple(config.tools))
            shared = self._bindings.get(key)
            if shared is None:
                shared = self._bindings[key] = self._bind(model_name, temperature, builtin)
            model = shared
        max_stored = settings.history_max_stored_messages
        return TenantAgent(
            tenant_id=tenant_id,
            system_message=SystemMessage(config.system_prompt),
            model=model,
            tools={t.name: t for t in (*builtin, *own_tools)},
            max_messages=min(config.history.max_messages or settings.history_max_messages,
                             max_stored),
            max_stored=max_stored,
            max_chars=settings.history_max_message_chars,
            tool_timeout_s=settings.tool_timeout_s,
        )

    async def build(self, tenant_id: str, config: TenantConfig) -> BuiltAgent:
        """The tenant's agent, its MCP servers connected and listed (the cache's builder)."""
        mcp = await self.mcp.load(tenant_id, config.mcp_servers)
        return BuiltAgent(
            agent=self.clone(tenant_id, config, mcp.tools),
            own_tools=len(mcp.tools),
            degraded=bool(mcp.failed),
        )
