"""The upstream's circuit breaker and retry budget: the state machine with a fake clock,
then the service against the real mock upstream failing, hanging its answers and
recovering."""

from __future__ import annotations

import httpx
import pytest

from app.llm.breaker import CircuitBreaker, CircuitOpen, RetryBudget, State
from app.observability.metrics import Metrics
from tests.clock import FakeClock
from tests.conftest import MockLLM
from tests.servers.processes import start_app
from tests.waiting import wait_for


def test_consecutive_failures_open_it_and_one_probe_closes_it() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("u", failures=3, open_s=10, clock=clock, metrics=Metrics())
    for _ in range(2):
        assert breaker.before_call() is False
        breaker.record(True, False)
    breaker.record(False, False)  # a success resets the count
    for _ in range(3):
        breaker.before_call()
        breaker.record(True, False)
    assert breaker.state is State.OPEN
    with pytest.raises(CircuitOpen) as refused:
        breaker.before_call()
    assert 9 < refused.value.retry_after_s <= 10
    clock.advance(10.5)
    assert breaker.before_call() is True  # the probe
    with pytest.raises(CircuitOpen):
        breaker.before_call()  # one probe at a time
    breaker.record(True, True)  # the probe failed: open again
    assert breaker.state is State.OPEN
    clock.advance(10.5)
    assert breaker.before_call() is True
    breaker.record(False, True)
    assert breaker.state is State.CLOSED and breaker.transitions == 5
    assert 'agenthost_llm_circuit_transitions_total{to="open",upstream="u"} 2.0' in \
        breaker._metrics.render().decode()


def test_a_failure_rate_opens_it_too() -> None:
    breaker = CircuitBreaker("u", failures=100, rate=0.5, window=20, clock=FakeClock(),
                             metrics=Metrics())
    for i in range(10):
        breaker.before_call()
        breaker.record(i % 2 == 0, False)  # alternate: never 2 in a row
    assert breaker.state is State.OPEN


def test_the_retry_budget_bounds_retries_to_a_share_of_calls() -> None:
    budget = RetryBudget(ratio=0.2, reserve=10)
    retries = 0
    for _ in range(1000):
        budget.on_call()
        retries += budget.take() + budget.take()  # every call would retry twice
    assert retries <= 0.2 * 1000 + 10 and budget.refused > 0


def test_a_failing_upstream_is_cut_off_then_probed_back(mock_llm: MockLLM) -> None:
    """Upstream answers 500: the first turns fail (502) after bounded calls, then the
    circuit opens and turns get 503 upstream_unavailable with Retry-After without calling
    it; once it answers again, one probe closes the circuit."""
    app = start_app({"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": mock_llm.base_url,
                     "AGENTHOST_LLM_BREAKER_FAILURES": "3",
                     "AGENTHOST_LLM_BREAKER_OPEN_S": "2", "AGENTHOST_LLM_MAX_RETRIES": "2"})
    url = f"http://127.0.0.1:{app.port}/v1/tenants/demo/threads/cb/messages"
    try:
        mock_llm.control(mode="500")
        before = mock_llm.count()
        statuses = [httpx.post(url, json={"message": f"m{i}"}, timeout=30)
                    for i in range(20)]
        calls = mock_llm.count() - before
        codes = [r.status_code for r in statuses]
        assert codes[0] == 502 and codes[-1] == 503, codes
        opened = [r for r in statuses if r.status_code == 503]
        assert len(opened) >= 15
        assert all(r.json()["error"]["code"] == "upstream_unavailable" and
                   1 <= int(r.headers["Retry-After"]) <= 2 for r in opened)
        assert calls <= 3 * 3, calls  # 3 failed turns, each at most 1 + 2 retries
        ready = httpx.get(f"http://127.0.0.1:{app.port}/health/ready", timeout=10).json()
        assert ready["circuit"]["state"] == "open"
        mock_llm.control(mode="ok")

        def served() -> bool:
            return httpx.post(url, json={"message": "back"}, timeout=30).status_code == 200

        wait_for(served)
        ready = httpx.get(f"http://127.0.0.1:{app.port}/health/ready", timeout=10).json()
        assert ready["circuit"]["state"] == "closed"
        metrics = httpx.get(f"http://127.0.0.1:{app.port}/metrics", timeout=10).text
        assert 'agenthost_llm_circuit_transitions_total{to="closed"' in metrics
    finally:
        app.stop()


def test_an_upstream_429_is_passed_on_with_its_retry_after(mock_llm: MockLLM) -> None:
    app = start_app({"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": mock_llm.base_url,
                     "AGENTHOST_LLM_MAX_RETRIES": "0"})
    try:
        response = httpx.post(
            f"http://127.0.0.1:{app.port}/v1/tenants/demo/threads/rl/messages",
            json={"message": "[[fail:429]]"}, timeout=30)
        assert response.status_code == 429
        assert response.json()["error"]["code"] == "upstream_rate_limited"
        assert response.headers["Retry-After"] == "1"
    finally:
        app.stop()
