"""A circuit breaker and a retry budget for one upstream (one base URL).

Written here rather than taken from a library: purgatory (asyncio) lets every request
through when half-open and counts consecutive failures only, on wall-clock time;
pybreaker's async support needs Tornado; aiobreaker has had no release since 2021. What
this service needs is small:

- closed: calls go through; it opens after ``failures`` consecutive failed calls, or when
  at least ``rate`` of the last ``window`` calls failed (once ``window // 2`` are known);
- open: calls fail at once with ``CircuitOpen`` (503 ``upstream_unavailable`` with
  ``Retry-After``) for ``open_s``;
- half-open: one call, the probe, goes through; the others fail at once as if open. The
  probe's success closes the circuit, its failure opens it again.

A failure is what says the upstream is unwell: a connection error, a timeout, a 5xx.
A 4xx (a 429 included) is the request's or the account's, not the upstream's health.

``RetryBudget``: retries are at most ``ratio`` of the calls (plus a small reserve), so
when the upstream fails, retries cannot multiply the load on it (every call retried twice
would triple it).
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable

import httpx2
import openai

from app.observability.metrics import Metrics

logger = logging.getLogger(__name__)


class State(enum.IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


class CircuitOpen(openai.APIError):
    """The upstream's circuit is open: the call was not made."""

    def __init__(self, url: str, retry_after_s: float) -> None:
        super().__init__(f"the language model at {url} is failing; calls are paused for "
                         f"{retry_after_s:.0f}s", httpx2.Request("POST", url), body=None)
        self.retry_after_s = retry_after_s


def is_failure(error: BaseException) -> bool:
    """Does this error say the upstream is unwell?"""
    if isinstance(error, openai.APIStatusError):
        return error.status_code >= 500
    return isinstance(error, openai.APIConnectionError | openai.APITimeoutError)


class CircuitBreaker:
    def __init__(self, name: str, *, failures: int = 5, rate: float = 0.5, window: int = 20,
                 open_s: float = 30.0, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.failures = failures
        self.rate = rate
        self.open_s = open_s
        self.state = State.CLOSED
        self.transitions = 0
        self._clock = clock
        self._metrics = metrics or Metrics()
        self._consecutive = 0
        self._outcomes: deque[bool] = deque(maxlen=window)  # True: failed
        self._opened_at = 0.0
        self._probing = False
        self._metrics.llm_breaker_state.labels(name).set(0)

    def before_call(self) -> bool:
        """Raise ``CircuitOpen``, or let the call go; True when it is the half-open probe."""
        if self.state is State.OPEN:
            left = self._opened_at + self.open_s - self._clock()
            if left > 0:
                raise CircuitOpen(self.name, left)
            self._move(State.HALF_OPEN)
        if self.state is State.HALF_OPEN:
            if self._probing:
                raise CircuitOpen(self.name, 1.0)
            self._probing = True
            return True
        return False

    def record(self, failed: bool, probe: bool) -> None:
        if probe:
            self._probing = False
            if failed:
                self._open()
            else:
                self._consecutive = 0
                self._outcomes.clear()
                self._move(State.CLOSED)
            return
        if self.state is not State.CLOSED:
            return  # a call that began before the circuit opened
        self._outcomes.append(failed)
        self._consecutive = self._consecutive + 1 if failed else 0
        known = len(self._outcomes)
        rate = sum(self._outcomes) / known if known else 0.0
        if self._consecutive >= self.failures or (
                known >= (self._outcomes.maxlen or 0) // 2 and rate >= self.rate):
            self._open()

    def abandon_probe(self) -> None:
        """The probe ended without a verdict (cancelled): the next call probes."""
        self._probing = False

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._consecutive = 0
        self._outcomes.clear()
        self._move(State.OPEN)

    def _move(self, state: State) -> None:
        if state is self.state:
            return
        before, self.state = self.state, state
        self.transitions += 1
        self._metrics.llm_breaker_state.labels(self.name).set(int(state))
        self._metrics.llm_breaker_transitions.labels(self.name, state.label).inc()
        log = logger.warning if state is State.OPEN else logger.info
        log("upstream %s: circuit %s -> %s%s", self.name, before.label, state.label,
            f" for {self.open_s:g}s" if state is State.OPEN else "")

    def report(self) -> dict[str, object]:
        return {"state": self.state.label, "transitions": self.transitions}


class RetryBudget:
    """Retries at most ``ratio`` of the calls, plus ``reserve`` for a quiet start."""

    def __init__(self, ratio: float = 0.2, reserve: float = 10.0) -> None:
        self.ratio = ratio
        self.reserve = reserve
        self._tokens = reserve
        self.spent = 0
        self.refused = 0

    def on_call(self) -> None:
        self._tokens = min(self.reserve, self._tokens + self.ratio)

    def take(self) -> bool:
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self.spent += 1
            return True
        self.refused += 1
        return False
