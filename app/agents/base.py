"""``BaseAgent``: what a worker builds once and every tenant's agent shares.

The compiled graph, the model pool and the builtin tools live here; ``clone`` makes a
tenant's ``TenantAgent`` from its config, holding only references to the shared parts
plus the tenant's prompt, model binding and caps.
"""

from __future__ import annotations

from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import BaseMessage, SystemMessage
from langchain_core.runnables import Runnable

from app.agents.graph import AgentGraph, TenantAgent
from app.agents.models import ModelPool
from app.agents.tenants import TenantConfig
from app.agents.tools import ToolRegistry
from config.settings import Settings


class BaseAgent:
    def __init__(
        self, graph: AgentGraph, models: ModelPool, tools: ToolRegistry, settings: Settings
    ) -> None:
        self.graph = graph
        self.models = models
        self.tools = tools
        self._settings = settings

    def clone(self, tenant_id: str, config: TenantConfig) -> TenantAgent:
        settings = self._settings
        tools = self.tools.select(config.tools)
        model: Runnable[LanguageModelInput, BaseMessage] = self.models.get(
            config.model or settings.default_model
        )
        if tools:
            model = model.bind_tools(tools)  # type: ignore[attr-defined]
        temperature = (
            config.temperature if config.temperature is not None else settings.default_temperature
        )
        model = model.bind(temperature=temperature)
        max_stored = settings.history_max_stored_messages
        return TenantAgent(
            tenant_id=tenant_id,
            system_message=SystemMessage(config.system_prompt),
            model=model,
            tools={t.name: t for t in tools},
            max_messages=min(config.history.max_messages or settings.history_max_messages,
                             max_stored),
            max_stored=max_stored,
            max_chars=settings.history_max_message_chars,
            tool_timeout_s=settings.tool_timeout_s,
        )
