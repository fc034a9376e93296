"""Service settings: environment variables (prefix ``AGENTHOST_``) and an optional YAML file.

No instance is built at import time; ``create_app`` and the entry points build one.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

CONFIG_DIR = Path(__file__).resolve().parent
CONFIG_FILE_ENV = "AGENTHOST_CONFIG_FILE"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Every field is documented once here; README's table is checked against this class."""

    model_config = SettingsConfigDict(
        env_prefix="AGENTHOST_",
        extra="ignore",
        populate_by_name=True,
        validate_default=True,
    )

    # --- serving ---
    host: str = Field("127.0.0.1", description="Address the service binds to.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port the service binds to.")
    log_level: str = Field("INFO", description="Root log level (DEBUG, INFO, WARNING, ERROR).")
    workers: int = Field(
        2, ge=1, le=64,
        validation_alias=AliasChoices("AGENTHOST_WORKERS", "WEB_CONCURRENCY"),
        description="Gunicorn worker processes (also read from WEB_CONCURRENCY). One, "
        "whatever this says, without Redis: conversations then live in the process.",
    )
    worker_max_requests: int = Field(
        1000, ge=0, description="A Gunicorn worker is replaced after this many requests "
        "(plus up to 50 of jitter; 0: never). Off without Redis, which would lose the "
        "conversations it holds.",
    )
    allow_public_without_auth: bool = Field(
        False,
        description="Permit a non-loopback host with auth off. Refused by default.",
    )

    # --- auth ---
    service_api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated service keys; a service key acts on every tenant.",
    )

    ops_token: SecretStr | None = Field(
        None, description="Bearer token that shows operators the details /health/ready and "
        "/cache-stats hold (storage and model addresses, cache contents) when auth is on; "
        "the admin token and service keys show them too.",
    )

    admin_token: SecretStr | None = Field(
        None, description="Bearer token for the /v1/admin API; without it the admin API is off."
    )

    # --- tenants ---
    tenants_file: Path = Field(
        CONFIG_DIR / "tenants.yaml", description="YAML file with the tenants loaded at start."
    )

    tenant_sync_interval_s: float = Field(
        2.0, gt=0, description="With Redis: how often a worker checks for tenant changes it "
        "missed on pub/sub."
    )

    # --- agent cache ---
    agent_cache_max_entries: int = Field(
        1000, ge=1, description="Tenant agents cached per worker (least recently used go)."
    )
    agent_cache_max_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="Estimated bytes the agent cache may hold."
    )
    agent_cache_ttl_s: float = Field(
        3600.0, gt=0, description="A cached agent unused this long is dropped."
    )
    mcp_timeout_s: float = Field(
        10.0, gt=0, description="Connecting to a tenant's MCP server and listing its tools."
    )
    mcp_retry_s: float = Field(
        30.0, gt=0, description="After an MCP server failed, retry it this much later."
    )

    # --- LLM ---
    openai_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("AGENTHOST_OPENAI_API_KEY", "OPENAI_API_KEY"),
        description="OpenAI-compatible API key (also read from OPENAI_API_KEY). "
        "Unset: the offline built-in model answers.",
    )
    openai_base_url: str | None = Field(
        None,
        validation_alias=AliasChoices("AGENTHOST_OPENAI_BASE_URL", "OPENAI_BASE_URL"),
        description="OpenAI-compatible base URL (also read from OPENAI_BASE_URL).",
    )
    openai_org_id: str | None = Field(
        None,
        validation_alias=AliasChoices("AGENTHOST_OPENAI_ORG_ID", "OPENAI_ORG_ID"),
        description="Sent as OpenAI-Organization (also read from OPENAI_ORG_ID).",
    )
    ssl_cert_file: Path | None = Field(
        None,
        validation_alias=AliasChoices("AGENTHOST_SSL_CERT_FILE", "SSL_CERT_FILE"),
        description="CA bundle that verifies the LLM's TLS certificate (also read from "
        "SSL_CERT_FILE). Unset, with no SSL_CERT_DIR either: certifi's CAs.",
    )
    ssl_cert_dir: Path | None = Field(
        None,
        validation_alias=AliasChoices("AGENTHOST_SSL_CERT_DIR", "SSL_CERT_DIR"),
        description="Directory of CA certificates for the LLM's TLS (also read from "
        "SSL_CERT_DIR).",
    )
    default_model: str = Field("gpt-4o-mini", description="Model for tenants that name none.")
    default_temperature: float = Field(
        0.2, ge=0, le=2, description="Temperature for tenants that set none."
    )
    llm_timeout_s: float = Field(60.0, gt=0, description="Read timeout of one LLM call.")
    llm_connect_timeout_s: float = Field(5.0, gt=0, description="Connect timeout to the LLM.")
    llm_max_retries: int = Field(2, ge=0, le=10, description="Retries of a failed LLM call.")
    llm_max_reply_kb: int = Field(
        256, ge=1, description="Largest reply the LLM may send (KiB of text and tool-call "
        "arguments); a longer one fails the turn with 502 upstream_error. Each turn in flight "
        "reserves 16x it in memory (see Memory governance).",
    )
    llm_breaker_failures: int = Field(
        5, ge=1, description="The upstream's circuit opens after this many consecutive "
        "failed calls (connection errors, timeouts, 5xx).",
    )
    llm_breaker_failure_rate: float = Field(
        0.5, gt=0, le=1, description="...or when this share of its last 20 calls failed.",
    )
    llm_breaker_open_s: float = Field(
        30.0, gt=0, description="An open circuit answers 503 upstream_unavailable at once "
        "for this long, then lets one probe call through.",
    )
    llm_retry_budget: float = Field(
        0.2, ge=0, le=1, description="Retries of failed LLM calls are at most this share of "
        "the calls (plus 10), so retries cannot multiply the load on a failing upstream.",
    )
    llm_max_connections: int = Field(
        200, ge=1, description="Connection pool size per LLM base URL."
    )
    llm_max_keepalive: int = Field(
        50, ge=0, description="Idle keep-alive connections the OpenAI SDK's client keeps "
        "(Responses-API models only; chat completions keep up to max_connections idle, 15 s).",
    )

    # --- persistence ---
    redis_url: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("AGENTHOST_REDIS_URL", "REDIS_URL"),
        description="Redis 8 (RedisJSON + RediSearch) URL (also read from REDIS_URL); a bare "
        "host:port (as platforms hand out) means redis://host:port/0. Unset: bounded "
        "in-memory persistence.",
    )
    redis_checkpointer: Literal["auto", "langgraph", "plain"] = Field(
        "auto", description="langgraph: langgraph-checkpoint-redis (needs RedisJSON and "
        "RediSearch); plain: core commands only (any Redis, Valkey, managed services); auto: "
        "langgraph when the modules are there, else plain (decided at start).",
    )
    redis_cluster: bool | None = Field(
        None, description="Redis Cluster: true uses redis-py's cluster client (and the plain "
        "checkpointer: RediSearch does not span a cluster); false a single server; unset: "
        "asked at start (INFO cluster).",
    )
    redis_max_connections: int = Field(50, ge=1, description="Redis connection pool size "
                                       "(per node with Redis Cluster).")
    redis_timeout_s: float = Field(
        5.0, gt=0, description="Redis socket timeout, and wait for a free pooled connection."
    )
    history_ttl_s: int = Field(
        86400, ge=1, description="A thread is forgotten this long after its last use."
    )
    history_refresh_on_read: bool = Field(
        True, description="Reading a thread's history restarts its TTL."
    )
    memory_max_threads: int = Field(
        10000, ge=1, description="In-memory persistence: threads kept (least recently used go)."
    )
    memory_store_max_bytes: int | None = Field(
        None, ge=1024,
        description="In-memory persistence: bytes of conversation held (least recently used "
        "threads go). Unset: a quarter of the memory limit.",
    )
    memory_store_compress: bool = Field(
        True, description="In-memory persistence: hold checkpoints zstd-compressed.",
    )

    # --- memory governance ---
    memory_limit_mb: float | None = Field(
        None, gt=0,
        description="Memory this service may use. Unset: the container's cgroup limit, "
        "else the machine's RAM.",
    )
    memory_moderate: float = Field(
        0.70, gt=0, lt=1, description="Fraction of the limit where pressure is moderate "
        "(the agent cache shrinks to half its budget).",
    )
    memory_high: float = Field(
        0.85, gt=0, lt=1, description="Fraction of the limit where pressure is high (the "
        "conversation store shrinks, gc runs, new streams get 503).",
    )
    memory_critical: float = Field(
        0.95, gt=0, lt=1, description="Fraction of the limit where pressure is critical "
        "(new turns get 503 too; turns in flight finish).",
    )
    memory_hysteresis: float = Field(
        0.05, ge=0, lt=0.5,
        description="A pressure level is left only this fraction of the limit below its "
        "threshold.",
    )
    memory_sample_s: float = Field(1.0, gt=0, description="Seconds between memory samples.")
    memory_gc_interval_s: float = Field(
        10.0, ge=0, description="Under high pressure, run gc.collect() and malloc_trim at most "
        "this often.",
    )
    memory_retry_after_s: int = Field(
        5, ge=1, description="Retry-After (seconds) on 503 memory_pressure.",
    )
    memory_leak_warmup_s: float = Field(
        300.0, ge=0, description="Memory samples for leak detection start this long after "
        "startup (caches and pools fill first).",
    )
    memory_leak_window_s: float = Field(
        3600.0, gt=0, description="Leak detection fits a line to the samples of this window.",
    )
    memory_leak_mb_per_hour: float = Field(
        50.0, gt=0, description="A growth slope above this is reported as a suspected leak.",
    )
    memory_tracemalloc: bool = Field(
        False, description="Trace allocations (costs CPU) and serve the top growing "
        "allocation sites at GET /v1/admin/memory/allocations.",
    )
    memory_test_allocations: bool = Field(
        False, description="Test only: POST/DELETE /v1/admin/memory/ballast grow and release "
        "memory on demand. Never enable in production.",
    )

    # --- history caps ---
    history_max_messages: int = Field(
        20, ge=1, description="Messages the model sees per turn (tenants may lower or raise)."
    )
    history_max_stored_messages: int = Field(
        40, ge=2, description="Messages stored per thread; older turns are dropped."
    )
    history_max_message_chars: int = Field(
        4000, ge=100, description="Older messages longer than this are truncated for the model."
    )

    # --- request limits ---
    max_message_bytes: int = Field(
        32768, ge=1, description="Largest user message in UTF-8 bytes (413 above)."
    )
    max_body_bytes: int = Field(
        262144, ge=1024, description="Largest request body in bytes (413 above)."
    )
    turn_timeout_s: float = Field(
        120.0, gt=0, description="Longest a whole turn (all model and tool calls) may take."
    )
    tool_timeout_s: float = Field(30.0, gt=0, description="Longest one tool call may take.")
    max_tool_rounds: int = Field(
        8, ge=1, description="Model/tool round trips allowed in one turn."
    )

    # --- streaming ---
    stream_queue_size: int = Field(
        100, ge=1, description="Events buffered per stream connection."
    )
    stream_send_timeout_s: float = Field(
        10.0, gt=0, description="A stream whose queue stays full this long ends slow_consumer."
    )
    stream_send_cutoff_s: float = Field(
        30.0, gt=0, description="A client whose socket takes nothing this long is "
        "disconnected (checked every third of it).",
    )
    stream_heartbeat_s: float = Field(
        15.0, gt=0, description="Seconds between ': ping' comments on an idle stream."
    )
    stream_max_per_worker: int = Field(
        1000, ge=1, description="Live streams per worker (429 beyond)."
    )
    stream_max_per_tenant: int = Field(
        100, ge=1, description="Live streams per tenant in a worker (429 beyond)."
    )
    stream_max_age_s: float = Field(
        600.0, gt=0, description="The janitor ends streams older than this."
    )
    stream_retry_after_s: int = Field(
        2, ge=1, description="Retry-After seconds sent with a 429 for too many streams."
    )
    stream_replay_s: float = Field(
        120.0, ge=0, description="A streamed turn's events are kept this long after it ends, "
        "so a client that lost its connection can rejoin (GET .../stream with Last-Event-ID); "
        "in a Redis Stream per turn with Redis, else in this worker. 0: no replay.",
    )
    stream_replay_max_events: int = Field(
        4096, ge=16, description="Events kept per streamed turn for rejoin; a rejoin that "
        "asks for older ones gets 410 replay_gone.",
    )
    stream_replay_max_bytes: int = Field(
        16 * 2**20, ge=4096, description="In-memory replay only (no Redis): bytes of "
        "events kept per worker; the oldest finished turns are forgotten first.",
    )
    chat_page: bool = Field(
        True, description="Serve the browser chat page at GET / (a static file; it holds no "
        "secret, the key is typed into it).",
    )
    cancel_on_disconnect: bool = Field(
        False,
        description="Stop the agent run when its stream's client disconnects (saves tokens; "
        "the turn is then not stored). Off: the run finishes and is stored.",
    )
    janitor_interval_s: float = Field(
        60.0, gt=0, description="Seconds between the janitor's cleanup sweeps."
    )
    header_read_timeout_s: float = Field(
        10.0, gt=0, description="A request's headers must arrive within this long of the "
        "connection (or of its first byte); else 408 and the connection is closed.",
    )
    body_read_timeout_s: float = Field(
        30.0, gt=0, description="A request's body must arrive within this long of its "
        "headers; else 408 request_timeout and the connection is closed.",
    )
    max_connections: int = Field(
        1000, ge=1, description="Open client connections per worker; beyond it a new one "
        "gets 503 too_many_connections at once. Lowered to the open-file limit minus 256.",
    )
    tenant_turns_per_minute: int = Field(
        0, ge=0, description="Turns a tenant may start per minute (moving window, shared "
        "through Redis), unless its config says otherwise; 0: no limit. Beyond: 429.",
    )
    tenant_concurrent_turns: int = Field(
        0, ge=0, description="Turns a tenant may have running at once across workers and "
        "replicas, unless its config says otherwise; 0: no limit. Beyond: 429.",
    )
    thread_busy_policy: Literal["enqueue", "reject"] = Field(
        "enqueue", description="A message on a thread whose previous turn still runs: "
        "enqueue (wait up to thread_wait_s, then 409 thread_busy) or reject (409 at once). "
        "A request may choose with the X-Busy-Policy header.",
    )
    thread_wait_s: float = Field(
        30.0, gt=0, description="How long an enqueued turn waits for the thread's previous "
        "turn before 409 thread_busy.",
    )
    thread_lease_s: float = Field(
        10.0, ge=1, description="The Redis thread lock is a lease this long, renewed every "
        "third of it while the turn runs; a lock nobody holds lapses within it.",
    )
    shutdown_grace_s: float = Field(
        20.0, ge=0, description="On shutdown, running turns get this long to finish."
    )

    @field_validator("redis_url", mode="before")
    @classmethod
    def _redis_scheme(cls, value: Any) -> Any:
        if isinstance(value, str) and value and "://" not in value:
            return f"redis://{value}/0"
        return value

    @field_validator("service_api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("service_api_keys", "admin_token", "ops_token")
    @classmethod
    def _bearer_tokens(cls, value: Any) -> Any:
        """Keys a client can send as RFC 6750 says (``Authorization: Bearer <token68>``)."""
        for secret in value if isinstance(value, list) else [value]:
            if secret is not None and not re.fullmatch(r"[A-Za-z0-9._~+/-]+=*",
                                                       secret.get_secret_value()):
                raise ValueError("keys and tokens are sent as 'Bearer <token>': letters, "
                                 "digits and -._~+/ only (then any '=')")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"unknown log level {value!r}")
        return level

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        if self.history_max_stored_messages < self.history_max_messages:
            raise ValueError(
                "history_max_stored_messages must be at least history_max_messages: "
                "the model cannot see messages that are not stored"
            )
        if self.max_body_bytes < self.max_message_bytes:
            raise ValueError("max_body_bytes must be at least max_message_bytes")
        if not self.memory_moderate < self.memory_high < self.memory_critical:
            raise ValueError("memory thresholds must rise: moderate < high < critical")
        return self

    @property
    def binds_loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def offline_model(self) -> bool:
        return self.openai_api_key is None

    @property
    def redis_configured(self) -> bool:
        return self.redis_url is not None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_path = os.environ.get(CONFIG_FILE_ENV)
        if yaml_path:
            if not Path(yaml_path).is_file():
                raise ValueError(f"{CONFIG_FILE_ENV}={yaml_path} is not a readable file")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_path))
        return tuple(sources)
