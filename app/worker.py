"""``AgentHostWorker``: the Gunicorn worker class (``config/gunicorn.conf.py`` names it).

uvicorn-worker's ``UvicornWorker`` with the shutdown timing ``python -m app`` uses: requests
in flight (JSON turns and streams) get the shutdown grace, plus a margin so streams still
running then get their final event before uvicorn closes their connections. uvloop, and
httptools with the connection guards of app/connections.py.
"""

from __future__ import annotations

from typing import Any, ClassVar

from uvicorn_worker import UvicornWorker

from app.connections import connection_cap, guarded_protocol, raise_open_file_limit
from config.settings import Settings

SHUTDOWN_MARGIN_S = 5


def graceful_shutdown_s(settings: Settings) -> int:
    return int(settings.shutdown_grace_s) + SHUTDOWN_MARGIN_S


class AgentHostWorker(UvicornWorker):  # type: ignore[misc]  # untyped base
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {"loop": "auto", "http": "auto",
                                               "access_log": False}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Read when the worker starts (the master has validated the settings by then),
        # not at import.
        settings = Settings()
        cap = connection_cap(settings.max_connections, raise_open_file_limit())
        self.CONFIG_KWARGS = {  # type: ignore[misc]
            **self.CONFIG_KWARGS,
            "timeout_graceful_shutdown": graceful_shutdown_s(settings),
            "http": guarded_protocol(settings.header_read_timeout_s, cap),
        }
        super().__init__(*args, **kwargs)
