"""``TurnRunner``: runs one chat turn of a tenant's agent on a thread, start to saved.

Turns on one thread run one at a time: a per-thread lock in this worker (gone with its
last waiter), plus the backend's thread lock across workers and replicas (Redis). Every
failure leaves as an ``AppError``, and a failed turn is undone, so the thread is as it
was and the client can simply retry.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from weakref import WeakValueDictionary

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    RemoveMessage,
)
from langchain_core.runnables import RunnableConfig
from langgraph.errors import GraphRecursionError
from langgraph.graph import MessagesState

from app.agents.graph import AgentGraph, TenantAgent, TurnContext
from app.errors import (
    AppError,
    ThreadBusy,
    TurnTimeout,
    UpstreamError,
)
from app.llm.chat_model import OnToken
from app.llm.errors import UPSTREAM_ERRORS, upstream_error
from app.observability.metrics import Metrics
from app.persistence.base import NOT_UNDONE, Backend, thread_config
from app.turns.events import OnEvent, Replied, Token, tool_events
from config.settings import Settings

logger = logging.getLogger(__name__)

#: a message on a busy thread: wait for its turn, or be refused at once
POLICIES = ("enqueue", "reject")


@dataclass(slots=True)
class TurnResult:
    reply: AIMessage
    new_messages: list[BaseMessage]
    usage: dict[str, int]


def sum_usage(messages: list[BaseMessage]) -> dict[str, int]:
    totals = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    for message in messages:
        usage = getattr(message, "usage_metadata", None)
        if usage:
            for name in totals:
                totals[name] += int(usage.get(name, 0))
    return totals


def _say_if_not_undone(cause: BaseException, error: AppError) -> AppError:
    """A failed turn that could not be undone says so: the thread may hold its message."""
    if NOT_UNDONE in getattr(cause, "__notes__", ()):
        error.message += ("; the turn could not be undone: the thread may hold your message, "
                          "read its history before retrying")
        error.headers = {**(error.headers or {}), "X-Turn-Undone": "false"}
    return error


class TurnRunner:
    def __init__(self, graph: AgentGraph, backend: Backend, settings: Settings,
                 metrics: Metrics | None = None) -> None:
        self._metrics = metrics or Metrics()
        self._graph = graph
        self._backend = backend
        self._timeout_s = settings.turn_timeout_s
        self._wait_s = settings.thread_wait_s
        self._policy = settings.thread_busy_policy
        self._busy_retry_after = str(max(1, round(min(settings.thread_wait_s, 5))))
        self._recursion_limit = 2 * settings.max_tool_rounds + 1
        self._locks: WeakValueDictionary[str, asyncio.Lock] = WeakValueDictionary()

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock

    def wait_for(self, policy: str | None) -> float:
        """Seconds a turn waits for its thread under ``policy`` (the default when None)."""
        return 0.0 if (policy or self._policy) == "reject" else self._wait_s

    def refuse_if_busy(self, key: str, policy: str | None) -> None:
        """Under ``reject``, ``ThreadBusy`` now when a turn on the thread runs in this
        worker (a stream is refused before it starts, not by an error event)."""
        lock = self._locks.get(key)
        if self.wait_for(policy) == 0 and lock is not None and lock.locked():
            raise self._busy(0.0)

    def _busy(self, wait_s: float) -> ThreadBusy:
        return ThreadBusy(
            "another turn is running on this thread" + (
                f" and did not end within {wait_s:g}s" if wait_s else ""),
            headers={"Retry-After": self._busy_retry_after})

    @asynccontextmanager
    async def _thread(self, key: str, wait_s: float) -> AsyncIterator[None]:
        """This worker's lock on the thread, waited for at most ``wait_s`` (0: not at all)."""
        lock = self._lock(key)
        if wait_s <= 0:
            if lock.locked():
                raise self._busy(wait_s)
            await lock.acquire()
        else:
            try:
                async with asyncio.timeout(wait_s):
                    await lock.acquire()
            except TimeoutError:
                raise self._busy(wait_s) from None
        try:
            yield
        finally:
            lock.release()

    @asynccontextmanager
    async def _turn(self, agent: TenantAgent, key: str, wait_s: float) -> AsyncIterator[None]:
        """Serialize per thread, bound in time, translate failures, count the outcome."""
        async with self._outcome(agent) as started, self._thread(key, wait_s):
            waited = time.perf_counter() - started
            async with (
                asyncio.timeout(self._timeout_s),
                self._backend.thread_lock(key, max(0.0, wait_s - waited)
                                          if wait_s else 0.0),
            ):
                yield

    @asynccontextmanager
    async def _outcome(self, agent: TenantAgent) -> AsyncIterator[float]:
        """Translate a turn's failures into ``AppError``s and count its outcome; yields
        when it started."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            yield started
        except AppError as exc:
            outcome = exc.code
            _say_if_not_undone(exc, exc)
            raise
        except TimeoutError as exc:
            outcome = TurnTimeout.code
            raise _say_if_not_undone(
                exc, TurnTimeout(f"the turn took longer than {self._timeout_s:g}s")) from exc
        except GraphRecursionError as exc:
            outcome = UpstreamError.code
            raise _say_if_not_undone(exc, UpstreamError(
                "the agent kept calling tools past its round limit")) from exc
        except UPSTREAM_ERRORS as exc:
            error = _say_if_not_undone(exc, upstream_error(exc))
            outcome = error.code
            raise error from exc
        except self._backend.unavailable_errors as exc:
            error = _say_if_not_undone(exc, await self._backend.unavailable(
                exc, f"a turn of tenant {agent.tenant_id}"))
            outcome = error.code
            raise error from exc
        finally:
            self._metrics.turns.labels(outcome).inc()
            self._metrics.turn_seconds.observe(time.perf_counter() - started)

    async def stateless(self, graph: AgentGraph, agent: TenantAgent,
                        messages: list[BaseMessage], on_token: OnToken | None,
                        recursion_limit: int) -> list[BaseMessage]:
        """A turn on the given conversation, stored nowhere (``graph`` has no
        checkpointer); every message after the run, the given ones first."""
        config: RunnableConfig = {"recursion_limit": recursion_limit}
        state: Any = {"messages": messages}
        async with self._outcome(agent), asyncio.timeout(self._timeout_s):
            final = await graph.ainvoke(state, config, context=TurnContext(agent, on_token))
        result: list[BaseMessage] = final["messages"]
        return result

    def _config(self, key: str) -> RunnableConfig:
        return {**thread_config(key), "recursion_limit": self._recursion_limit}

    async def run(
        self, agent: TenantAgent, key: str, text: str, on_event: OnEvent | None = None,
        *, policy: str | None = None,
    ) -> TurnResult:
        """Run a turn; with ``on_event``, report its tokens, tool calls and results as they
        happen, and its reply once stored."""
        message = HumanMessage(text, id=str(uuid.uuid4()))
        new: list[BaseMessage] = []
        config = self._config(key)
        # Tokens go straight to on_event's own coroutine, without a wrapper coroutine.
        context = TurnContext(agent, None if on_event is None else
                              lambda text: on_event(Token(text)))
        async with (
            self._turn(agent, key, self.wait_for(policy)),
            self._backend.unit_of_work(self._graph, key, message.id or ""),
        ):
            update: Any
            async for update in self._graph.astream(
                MessagesState(messages=[message]),
                config,
                context=context,
                durability="exit",
                stream_mode="updates",
            ):
                for node_update in update.values():
                    for produced in (node_update or {}).get("messages", []):
                        if isinstance(produced, RemoveMessage):
                            continue
                        new.append(produced)
                        if on_event is not None:
                            for event in tool_events(produced):
                                await on_event(event)
            result = self._result(new)  # no reply: a failed turn, undone like any other
        if on_event is not None:
            await on_event(Replied(result.reply.text, result.usage))
        return result

    @staticmethod
    def _result(new: list[BaseMessage]) -> TurnResult:
        reply = next((m for m in reversed(new) if isinstance(m, AIMessage)), None)
        if reply is None:
            raise UpstreamError("the language model returned no reply")
        return TurnResult(reply=reply, new_messages=new, usage=sum_usage(new))
