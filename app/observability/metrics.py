"""``Metrics``: every Prometheus metric of one app, in that app's own registry.

Built in the lifespan and handed to what records (no process-global registry: two apps
in one process, as in the tests, never mix their counts).

Under Gunicorn (``config/gunicorn.conf.py`` sets ``PROMETHEUS_MULTIPROC_DIR`` before
anything imports prometheus_client), every worker writes its values to files there and a
scrape answered by any worker reads them all (``MultiProcessCollector``): counters and
histograms add up, counts of a dead or recycled worker included; each gauge says how its
workers' values combine (``multiprocess_mode``), and live-only modes forget dead workers.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

STREAM_EVENT_TYPES = ("token", "tool", "message", "done", "error")


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.turns = Counter(
            "agenthost_turns_total", "Chat turns by outcome (ok or an error code).",
            ["outcome"], registry=r)
        self.turn_seconds = Histogram(
            "agenthost_turn_seconds", "Wall time of a chat turn, model and tools included.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r)
        self.persist_seconds = Histogram(
            "agenthost_persistence_cleanup_seconds",
            "Time spent dropping superseded checkpoints after a turn.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
            registry=r)
        self.streams_active = Gauge(
            "agenthost_streams_active", "Live SSE streams (all workers).", registry=r,
            multiprocess_mode="livesum")
        self.stream_events = Counter(
            "agenthost_stream_events_total", "SSE events queued for clients, by event type.",
            ["event"], registry=r)
        # Children looked up once: ``labels()`` per streamed token was ~2 % of a busy worker.
        self.stream_event_counts = {name: self.stream_events.labels(name)
                                    for name in STREAM_EVENT_TYPES}
        self.streams_ended = Counter(
            "agenthost_streams_ended_total",
            "Streams ended, by reason (done, error, slow_consumer, disconnected, expired, "
            "cancelled).", ["reason"], registry=r)
        self.stream_clients_cut = Counter(
            "agenthost_stream_clients_cut_total",
            "Stream connections closed because the client's socket took nothing for 3 send "
            "timeouts.", registry=r)
        self.streams_rejected = Counter(
            "agenthost_streams_rejected_total", "Streams refused with 429, by cap.", ["cap"],
            registry=r)
        self.stream_queue_high_water = Gauge(
            "agenthost_stream_queue_high_water",
            "Deepest any stream queue has been (deepest of the live workers).", registry=r,
            multiprocess_mode="livemax")
        self.janitor_removed = Counter(
            "agenthost_janitor_removed_total", "Items the janitor cleaned up, by sweep.",
            ["sweep"], registry=r)
        self.agent_build_seconds = Histogram(
            "agenthost_agent_build_seconds",
            "Time to build a tenant's agent (MCP listing included).",
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30), registry=r)
        self.mcp_failures = Counter(
            "agenthost_mcp_failures_total",
            "MCP servers that could not be used when building an agent.", registry=r)

        self.http_responses = Counter(
            "agenthost_http_responses", "HTTP responses by status code (499: the client left "
            "before a response started).", ["code"], registry=r)
        self.storage_errors = Counter(
            "agenthost_storage_errors", "Failures of conversation storage (Redis) seen by "
            "requests.", registry=r)
        self.memory_limit = Gauge(
            "agenthost_memory_limit_bytes", "Memory the service may use (see limit_source in "
            "/health/memory).", registry=r, multiprocess_mode="livemax")
        self.memory_usage = Gauge(
            "agenthost_memory_usage_bytes",
            "Memory counted against the limit (cgroup usage or the process tree's PSS).",
            registry=r, multiprocess_mode="livemostrecent")
        self.memory_pressure = Gauge(
            "agenthost_memory_pressure_level",
            "Memory pressure: 0 low, 1 moderate, 2 high, 3 critical (highest of the live "
            "workers).", registry=r, multiprocess_mode="livemax")
        self.memory_transitions = Counter(
            "agenthost_memory_pressure_transitions_total",
            "Memory pressure level changes.", ["from_level", "to_level"], registry=r)
        self.memory_refusals = Counter(
            "agenthost_memory_refusals_total",
            "Requests refused with 503 memory_pressure, by route and level (or 'reserve': "
            "the turns in flight held the memory left).",
            ["route", "level"], registry=r)
        self.llm_breaker_state = Gauge(
            "agenthost_llm_circuit_state",
            "The upstream's circuit: 0 closed, 1 half-open, 2 open (highest of the live "
            "workers).", ["upstream"], registry=r, multiprocess_mode="livemax")
        self.llm_breaker_transitions = Counter(
            "agenthost_llm_circuit_transitions_total",
            "Circuit state changes per upstream, by the state entered.",
            ["upstream", "to"], registry=r)
        self.turns_in_flight = Gauge(
            "agenthost_turns_in_flight",
            "Turns admitted and not yet ended (JSON and streamed), all live workers.",
            registry=r, multiprocess_mode="livesum")
        self.memory_gc_runs = Counter(
            "agenthost_memory_gc_runs_total", "gc.collect() runs under high memory pressure.",
            registry=r)
        self.memory_leak_slope = Gauge(
            "agenthost_memory_growth_bytes_per_second",
            "Least-squares slope of memory usage over the leak-detection window.", registry=r,
            multiprocess_mode="livemax")
        self.agent_cache_entries = Gauge(
            "agenthost_agent_cache_entries", "Tenant agents cached (all live workers).",
            registry=r, multiprocess_mode="livesum")
        self.agent_cache_bytes = Gauge(
            "agenthost_agent_cache_estimated_bytes",
            "Estimated bytes held by cached tenant agents (all live workers).", registry=r,
            multiprocess_mode="livesum")
        self.agent_cache_hits = Counter(
            "agenthost_agent_cache_hits", "Agent cache hits.", registry=r)
        self.agent_cache_misses = Counter(
            "agenthost_agent_cache_misses", "Agent cache misses.", registry=r)
        self.agent_cache_evictions = Counter(
            "agenthost_agent_cache_evictions",
            "Agents dropped from the cache, by reason (lru, budget, ttl, invalidated, "
            "pressure).", ["reason"], registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (of every worker, under
        Gunicorn)."""
        if multiprocess():
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)


def multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
