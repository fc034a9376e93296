"""Logging, configured once by the process entry point (never by ``create_app``)."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format=FORMAT, force=True)
    # httpx logs every request at INFO: one line per LLM call is noise at our rates.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLevelName(level)))
