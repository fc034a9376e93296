"""Prometheus metric definitions (module level by design: definitions only, no state)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TURNS = Counter(
    "agenthost_turns_total", "Chat turns by outcome (ok or an error code).", ["outcome"]
)
TURN_SECONDS = Histogram(
    "agenthost_turn_seconds",
    "Wall time of a chat turn, model and tools included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
PERSIST_SECONDS = Histogram(
    "agenthost_persistence_cleanup_seconds",
    "Time spent dropping superseded checkpoints after a turn.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
)

STREAMS_ACTIVE = Gauge("agenthost_streams_active", "Live SSE streams in this worker.")
STREAM_EVENTS = Counter(
    "agenthost_stream_events_total", "SSE events queued for clients, by event type.", ["event"]
)
# Children looked up once: ``labels()`` per streamed token was ~2 % of a busy worker.
STREAM_EVENT_COUNTS = {name: STREAM_EVENTS.labels(name)
                       for name in ("token", "tool", "message", "done", "error")}
STREAMS_ENDED = Counter(
    "agenthost_streams_ended_total",
    "Streams ended, by reason (done, error, slow_consumer, disconnected, expired, cancelled).",
    ["reason"],
)
STREAM_CLIENTS_CUT = Counter(
    "agenthost_stream_clients_cut_total",
    "Stream connections closed because the client's socket took nothing for 3 send timeouts.",
)
STREAMS_REJECTED = Counter(
    "agenthost_streams_rejected_total", "Streams refused with 429, by cap.", ["cap"]
)
STREAM_QUEUE_HIGH_WATER = Gauge(
    "agenthost_stream_queue_high_water", "Deepest any stream queue has been in this worker."
)
JANITOR_REMOVED = Counter(
    "agenthost_janitor_removed_total", "Items the janitor cleaned up, by sweep.", ["sweep"]
)

AGENT_CACHE_ENTRIES = Gauge("agenthost_agent_cache_entries", "Tenant agents cached.")
AGENT_CACHE_BYTES = Gauge(
    "agenthost_agent_cache_estimated_bytes", "Estimated bytes held by cached tenant agents."
)
AGENT_CACHE_HITS = Counter("agenthost_agent_cache_hits_total", "Agent cache hits.")
AGENT_CACHE_MISSES = Counter("agenthost_agent_cache_misses_total", "Agent cache misses.")
AGENT_CACHE_EVICTIONS = Counter(
    "agenthost_agent_cache_evictions_total",
    "Agents dropped from the cache, by reason (lru, budget, ttl, invalidated).",
    ["reason"],
)
AGENT_BUILD_SECONDS = Histogram(
    "agenthost_agent_build_seconds", "Time to build a tenant's agent (MCP listing included).",
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30),
)
MCP_FAILURES = Counter(
    "agenthost_mcp_failures_total", "MCP servers that could not be used when building an agent."
)
