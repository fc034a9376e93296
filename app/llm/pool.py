"""Chat model clients: one connection pool per base URL, one ChatOpenAI per model.

Tenants never get a client of their own: their temperature is bound onto the shared
model, so a thousand tenants on ``gpt-4o-mini`` share one connection pool. Chat
completions go through ``ChatCompletions`` (aiohttp); the OpenAI SDK's own pooled httpx
client serves only what that does not cover (the Responses API, structured output).
"""

from __future__ import annotations

import logging

import aiohttp
import httpx
from cachetools import LRUCache
from langchain_core.language_models import BaseChatModel

from app.llm.breaker import CircuitBreaker, RetryBudget
from app.llm.chat_model import PooledChatOpenAI
from app.llm.offline import OfflineChatModel
from app.llm.upstream import ChatCompletions, tls_context
from app.observability.metrics import Metrics
from config.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Distinct model names are few; the cap only guards against a misconfigured flood.
MAX_MODELS = 256


class ModelPool:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self._settings = settings
        self._offline: OfflineChatModel | None = None
        self._http: httpx.AsyncClient | None = None
        self._upstream: ChatCompletions | None = None
        self._models: LRUCache[str, BaseChatModel] = LRUCache(maxsize=MAX_MODELS)
        if settings.offline_model:
            self._offline = OfflineChatModel()
        else:
            key = settings.openai_api_key
            assert key is not None
            organization = settings.openai_org_id
            cafile = str(settings.ssl_cert_file) if settings.ssl_cert_file else None
            capath = str(settings.ssl_cert_dir) if settings.ssl_cert_dir else None
            self._upstream = ChatCompletions(
                self.base_url, key.get_secret_value(),
                max_connections=settings.llm_max_connections,
                connect_timeout_s=settings.llm_connect_timeout_s,
                read_timeout_s=settings.llm_timeout_s,
                max_retries=settings.llm_max_retries,
                max_reply_chars=settings.llm_max_reply_kb * 1024,
                breaker=CircuitBreaker(
                    self.base_url, failures=settings.llm_breaker_failures,
                    rate=settings.llm_breaker_failure_rate,
                    open_s=settings.llm_breaker_open_s, metrics=metrics),
                budget=RetryBudget(settings.llm_retry_budget),
                headers={"OpenAI-Organization": organization} if organization else None,
                cafile=cafile, capath=capath,
            )
            self._http = httpx.AsyncClient(
                limits=httpx.Limits(
                    max_connections=settings.llm_max_connections,
                    max_keepalive_connections=settings.llm_max_keepalive,
                ),
                timeout=httpx.Timeout(
                    settings.llm_timeout_s, connect=settings.llm_connect_timeout_s
                ),
                verify=tls_context(cafile, capath),
            )

    @property
    def base_url(self) -> str:
        return self._settings.openai_base_url or DEFAULT_BASE_URL

    @property
    def description(self) -> str:
        if self._offline is not None:
            return "offline built-in model (OPENAI_API_KEY not set)"
        return f"OpenAI-compatible API at {self.base_url}"

    def get(self, model: str) -> BaseChatModel:
        if self._offline is not None:
            return self._offline
        cached = self._models.get(model)
        if cached is None:
            key = self._settings.openai_api_key
            assert key is not None and self._http is not None
            cached = PooledChatOpenAI(
                model=model,
                api_key=key,
                base_url=self.base_url,
                http_async_client=self._http,
                upstream=self._upstream,
                max_retries=self._settings.llm_max_retries,
                timeout=self._settings.llm_timeout_s,
                stream_usage=True,
            )
            self._models[model] = cached
        return cached

    @property
    def circuit(self) -> dict[str, object] | None:
        """The upstream's circuit breaker state, when there is an upstream."""
        if self._upstream is None or self._upstream.breaker is None:
            return None
        return {**self._upstream.breaker.report(),
                "retries_spent": self._upstream.budget.spent,
                "retries_refused": self._upstream.budget.refused}

    async def check_upstream(self) -> str | None:
        """None when the upstream answers; otherwise why not."""
        if self._upstream is None:
            return None
        try:
            status = await self._upstream.list_models(timeout_s=2.0)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return f"upstream unreachable: {type(exc).__name__}"
        if status >= 500 or status in (401, 403):
            return f"upstream answered {status}"
        return None

    async def aclose(self) -> None:
        if self._upstream is not None:
            await self._upstream.aclose()
        if self._http is not None:
            await self._http.aclose()
