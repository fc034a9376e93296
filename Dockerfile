# agenthost: the service as production runs it (Gunicorn + Uvicorn workers, non-root).
#
#   docker build -t agenthost .
#   docker run -p 8000:8000 -e AGENTHOST_SERVICE_API_KEYS=... -e REDIS_URL=... agenthost
#
# BASE is the Python image both stages start from. Production keeps python:3.12-slim; the
# container test (`make container-test`) builds this same file on a local Debian image
# with Debian's Python 3.11, since no image registry is reachable there. Nothing else
# differs. BASE needs `python3` with `venv`, and `groupadd`/`useradd`.
ARG BASE=python:3.12-slim

FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
COPY requirements.txt /tmp/requirements.txt
# Wheels only: a source build would need a compiler in the image.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --quiet --upgrade pip==26.3 \
 && /opt/venv/bin/pip install --quiet --only-binary=:all: -r /tmp/requirements.txt \
 && find /opt/venv -name "__pycache__" -prune -exec rm -rf {} +

FROM ${BASE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AGENTHOST_HOST=0.0.0.0 \
    AGENTHOST_PORT=8000
RUN groupadd --gid 10001 agenthost \
 && useradd --uid 10001 --gid agenthost --home-dir /app --no-create-home \
    --shell /usr/sbin/nologin agenthost
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY app ./app
COPY config ./config
USER 10001:10001
EXPOSE 8000
# Liveness only (/health never depends on Redis or memory pressure); readiness is
# /health/ready, for the orchestrator's own probe. No curl in the slim image: Python asks.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python3", "-m", "app.healthcheck"]
# The command the tests run (tests/servers/processes.py GUNICORN_ARGS; `make run`).
CMD ["gunicorn", "-c", "config/gunicorn.conf.py", "app.asgi:app"]
