"""Gunicorn configuration: ``gunicorn -c config/gunicorn.conf.py app.asgi:app`` (``make run``).

Uvicorn workers (``app.worker.AgentHostWorker``); ``AGENTHOST_WORKERS``/``WEB_CONCURRENCY``
of them (2), one without Redis (the conversations live in the process); recycled after
``AGENTHOST_WORKER_MAX_REQUESTS`` requests with jitter, except without Redis. The app is
imported once in the master (``preload_app``) and ``gc.freeze()`` runs before each fork,
so the ~110 MB of imported libraries stay shared copy-on-write between workers (the
collector would otherwise touch, and so copy, every object's header). The graceful
timeout covers the shutdown grace the workers give turns in flight.

Prometheus counts of every worker are kept in ``PROMETHEUS_MULTIPROC_DIR`` (a fresh
temporary directory unless set), wiped at start; a dead worker's live gauges are dropped.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import ValidationError

from app.memory.usage import TREE_ROOT_ENV, WORKERS_ENV
from app.worker import SHUTDOWN_MARGIN_S
from config.settings import Settings

try:
    _settings = Settings()
except ValidationError as exc:
    print(f"agenthost: invalid configuration:\n{exc}", file=sys.stderr)
    sys.exit(2)

# --- multiprocess metrics: set before anything imports prometheus_client ---
_OWN_METRICS_DIR = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
METRICS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(
    prefix="agenthost-metrics-")
shutil.rmtree(METRICS_DIR, ignore_errors=True)  # counts of an earlier run are not ours
os.makedirs(METRICS_DIR, exist_ok=True)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = METRICS_DIR

# Each worker's memory governor counts this whole process tree against the limit.
os.environ[TREE_ROOT_ENV] = str(os.getpid())

# --- workers ---
_shared_storage = _settings.redis_configured
worker_class = "app.worker.AgentHostWorker"
workers = _settings.workers if _shared_storage else 1
os.environ[WORKERS_ENV] = str(workers)
max_requests = _settings.worker_max_requests if _shared_storage else 0
max_requests_jitter = 50 if max_requests else 0
timeout = 120
graceful_timeout = int(_settings.shutdown_grace_s) + SHUTDOWN_MARGIN_S + 5
keepalive = 5
preload_app = True
bind = [f"{_settings.host}:{_settings.port}"]
accesslog = None
errorlog = "-"
loglevel = _settings.log_level.lower()
proc_name = "agenthost"
# Gunicorn's control socket defaults to one path per user: replicas or test instances on
# one host would take it from each other, and a container has no use for it.
control_socket_disable = True


def on_starting(server: Any) -> None:
    if not _shared_storage and _settings.workers > 1:
        server.log.info("running 1 worker, not %d: without REDIS_URL the conversations live "
                        "in the worker's memory, which workers cannot share",
                        _settings.workers)
    if not _shared_storage:
        server.log.info("worker recycling (max_requests) is off: a new worker would start "
                        "with no conversations")
    server.log.info("metrics of all workers in %s", METRICS_DIR)


def pre_fork(server: Any, worker: Any) -> None:
    gc.collect()
    gc.freeze()


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    if _OWN_METRICS_DIR:
        shutil.rmtree(METRICS_DIR, ignore_errors=True)
