"""The edge: ``app`` for ASGI servers (``uvicorn app.asgi:app``, Gunicorn)."""

from __future__ import annotations

from app.main import create_app
from app.observability.logging import configure_logging
from config.settings import Settings

_settings = Settings()
configure_logging(_settings.log_level)
app = create_app(_settings)
