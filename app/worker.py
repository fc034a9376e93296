"""``AgentHostWorker``: the Gunicorn worker class (``config/gunicorn.conf.py`` names it).

uvicorn-worker's ``UvicornWorker`` with the shutdown timing ``python -m app`` uses: requests
in flight (JSON turns and streams) get the shutdown grace, plus a margin so streams still
running then get their final event before uvicorn closes their connections. uvloop and
httptools when installed ("auto").
"""

from __future__ import annotations

from typing import Any, ClassVar

from uvicorn_worker import UvicornWorker

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
        self.CONFIG_KWARGS = {**self.CONFIG_KWARGS,  # type: ignore[misc]
                              "timeout_graceful_shutdown": graceful_shutdown_s(Settings())}
        super().__init__(*args, **kwargs)
